"""The registry's aliases: the gate's promotion, a re-gate on new judged queries, a person's decision.

Three ways a version gets an alias, each a compare-and-set on the alias (set, wait
``register.promote_settle_s``, read it back) that leaves the version's tags consistent with it
(becoming champion, it loses the ``challenger`` alias and its failed-gate tag):

* the pipeline: :func:`promote` (the register step's decision, decided again if the champion
  moved meanwhile) or :func:`mark_challenger` (a refusal, recorded); both end with
  :func:`settle_inputs`, the write that lets a later run say "no change since" the version;
* ``kadet gate``: :func:`regate` measures an existing version on the evaluation data as it is
  now (e.g. just exported by ``kadet judge``): the version and its base model in one evaluation
  run, as the pipeline's evaluate step does, then :func:`kadet.registry.register.decide` with the
  pipeline's rules against the current champion (evaluated again on this data), and
  :func:`promote` if it passes. Nothing is trained;
* ``kadet promote``: :func:`promote_by_hand`, a person's decision: the alias moves and the
  version records who, when, why and the figures it had (``kadet.manual.*``); a version trained
  on other documents than the corpus (``--data``, else the champion's) is refused unless forced.

    r = regate(cfg, "challenger")               # cfg.data.data_dir holds the judged queries
    print(r.summary())                          # the figures; promoted, or why not
    h = promote_by_hand(cfg, "3", reason="judged better on the support queries")
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kadet.core.storage import mask_uri
from kadet.core.config import KadetConfig, RegisterConfig
from kadet.core.errors import KadetError
from kadet.kit.comparison import Comparison, display, gain_text
from kadet.registry.register import (DECIDED_TAG, EVAL_TAG, FAILURE_TAG, PENDING_INPUTS_TAG, Decision, alias_version,
                                     decide, evaluate_model, incumbent_metrics, local_model_dir, log_decision,
                                     metric_tag, version_metrics)
from kadet.registry.tracking import EVAL_KIND_TAG, GATE_TAG
from kadet.stages.fingerprint import CORPUS_TAG, INPUTS_TAG

log = logging.getLogger(__name__)

#: On a re-gated version: when, on what and the outcome; and the figures it had before.
REGATE_TAG = "kadet.regate"
REGATE_BEFORE_TAG = "kadet.regate.before"
#: On a version a person moved an alias to: who, when, why, which alias, what it replaced, the
#: figures it had then (JSON) and the corpus check.
MANUAL_TAGS = {"by": "kadet.manual.by", "at": "kadet.manual.at", "reason": "kadet.manual.reason",
               "to": "kadet.manual.to", "replaced": "kadet.manual.replaced", "figures": "kadet.manual.figures",
               "corpus": "kadet.manual.corpus"}
#: MLflow keeps at most this many characters in a tag value.
TAG_LIMIT = 5000


def settle_inputs(c, reg: RegisterConfig, version: str) -> None:
    """The version has its alias (or its refusal is recorded): its pending inputs fingerprint
    becomes ``kadet.inputs_fingerprint``, which lets a later run on the same inputs say "no change
    since" it. Idempotent."""
    tags = c.get_model_version(reg.model_name, version).tags or {}
    pending = tags.get(PENDING_INPUTS_TAG, "")
    if pending and tags.get(INPUTS_TAG) != pending:
        c.set_model_version_tag(reg.model_name, version, INPUTS_TAG, pending)



def promote(cfg: KadetConfig, version: str, attempts: int = 5) -> Decision:
    """Point the champion alias at ``version`` as a compare-and-set; returns the final decision.

    The register step decided against the champion of its time (tag ``kadet.decided_against``);
    another run may have moved the alias since. So: re-read the champion; if it is another
    version than the one decided against, decide again against it (:func:`decide_again`); set the
    alias; wait ``register.promote_settle_s`` and read it back. If a concurrent run moved it
    meanwhile, repeat against that run's version. Each promoter keeps the better of the two, so
    two runs racing converge on the better model whatever the interleaving.
    """
    from kadet.registry.tracking import client as get_client

    reg, c = cfg.register, get_client(cfg)
    mv = c.get_model_version(reg.model_name, version)
    decided_against = (mv.tags or {}).get(DECIDED_TAG, "")
    for _ in range(attempts):
        champ = alias_version(c, reg.model_name, reg.champion_alias)
        if champ is None or str(champ.version) != version:
            if champ is not None and str(champ.version) != decided_against:
                d = decide_again(cfg, mv, champ)
                if not d.promote:
                    log.info("promote v%s: champion is now v%s, better or as good: %s", version, champ.version, d.reason)
                    mark_challenger(cfg, version, d.reason)
                    return d
                decided_against = str(champ.version)
            if not set_champion_alias(c, reg, version):
                continue
        time.sleep(reg.promote_settle_s)
        now = alias_version(c, reg.model_name, reg.champion_alias)
        if now is not None and str(now.version) == version:
            break
        log.info("promote v%s: the champion alias moved to v%s meanwhile: deciding again", version,
                 now.version if now else None)
    else:
        raise KadetError(f"register: the champion alias of {reg.model_name} kept moving; v{version} not promoted "
                         f"after {attempts} tries (are many runs promoting at once?)")
    mark_champion(c, reg, version)
    settle_inputs(c, reg, version)
    return Decision(True, [], f"champion v{decided_against}" if decided_against else "base model")


def decide_again(cfg: KadetConfig, mv, champ) -> Decision:
    """Version ``mv`` against ``champ``, a champion that moved in after the register step decided:
    their tagged metrics on the same test data; other test data: refused (a rerun re-evaluates it)."""
    mine, theirs = version_metrics(mv, cfg.evaluation), version_metrics(champ, cfg.evaluation)
    same_data = (champ.tags or {}).get(EVAL_TAG) == (mv.tags or {}).get(EVAL_TAG)
    if theirs is None or mine is None or not same_data:
        return Decision(False, [f"champion moved to v{champ.version} during this run and was measured on "
                                "other test data; rerun the register step to compare on the same data"],
                        f"champion v{champ.version}")
    return decide(mine, theirs, cfg.register, f"champion v{champ.version}", metrics=cfg.evaluation,
                  kind=(mv.tags or {}).get(EVAL_KIND_TAG, "gold"))


def set_champion_alias(c, reg: RegisterConfig, version: str) -> bool:
    """Point the champion alias at ``version``; False (after ``register.promote_settle_s``) when a
    concurrent write of the same alias made the store refuse (its unique key): read it again."""
    from mlflow.exceptions import MlflowException

    try:
        c.set_registered_model_alias(reg.model_name, reg.champion_alias, version)
        return True
    except MlflowException as exc:
        if exc.error_code in AUTH_REFUSALS:  # not a concurrent write: no retry can help
            raise
        log.info("promote v%s: the champion alias was being written by another run (%s): re-reading",
                 version, str(exc).splitlines()[0][:200])
        time.sleep(reg.promote_settle_s)
        return False


def mark_champion(c, reg: RegisterConfig, version: str) -> None:
    """Tag a promoted version as passed: its failure tag and the challenger alias on it go."""
    c.set_model_version_tag(reg.model_name, version, GATE_TAG, "passed")
    if FAILURE_TAG in (c.get_model_version(reg.model_name, version).tags or {}):
        c.delete_model_version_tag(reg.model_name, version, FAILURE_TAG)
    chall = alias_version(c, reg.model_name, reg.challenger_alias)
    if chall is not None and str(chall.version) == version:
        c.delete_registered_model_alias(reg.model_name, reg.challenger_alias)


def mark_challenger(cfg: KadetConfig, version: str, reason: str) -> None:
    """Point the challenger alias at ``version`` and tag why it failed; the champion stays."""
    from kadet.registry.tracking import client as get_client

    reg, c = cfg.register, get_client(cfg)
    c.set_registered_model_alias(reg.model_name, reg.challenger_alias, version)
    c.set_model_version_tag(reg.model_name, version, GATE_TAG, "failed")
    c.set_model_version_tag(reg.model_name, version, FAILURE_TAG, reason)
    settle_inputs(c, reg, version)


# ---------------------------------------------------------------- finding a version


def resolve_version(c, reg: RegisterConfig, spec: str):
    """The version ``spec`` names: a number ("3" or "v3"), or an alias (champion, challenger)."""
    from mlflow.exceptions import MlflowException

    spec = str(spec).strip()
    if spec in ("champion", "challenger", reg.champion_alias, reg.challenger_alias):
        alias = reg.champion_alias if spec in ("champion", reg.champion_alias) else reg.challenger_alias
        mv = alias_version(c, reg.model_name, alias)
        if mv is None:
            raise KadetError(f"{reg.model_name} has no {alias!r} version")
        return mv
    number = spec[1:] if spec[:1] in "vV" and spec[1:].isdigit() else spec
    if not number.isdigit():
        raise KadetError(f"version {spec!r}: a version number, {reg.champion_alias} or {reg.challenger_alias}")
    try:
        return c.get_model_version(reg.model_name, number)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise KadetError(f"{reg.model_name} has no version {number}") from None
        raise


def version_folder(cfg: KadetConfig, c, mv, scratch: Path) -> Path:
    """The version's sentence-transformers folder: where a local store keeps it, else downloaded
    into ``scratch``."""
    from kadet.registry.tracking import tracking_uri

    source = c.get_model_version_download_uri(cfg.register.model_name, mv.version)
    local = "://" not in source or source.startswith("file:")
    return local_model_dir(source, tracking_uri=tracking_uri(cfg), dst_path=None if local else scratch)


#: MLflow's error codes for a caller it refuses: 401 (no or wrong credentials), 403 (no permission).
AUTH_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")


@contextmanager
def mlflow_access(cfg: KadetConfig):
    """MLflow refusing the caller (HTTP 401, 403) as a one-line :class:`KadetError` that says what
    to do, with the store's public address (never a password, token or the server's traceback)."""
    from mlflow.exceptions import MlflowException

    from kadet.registry.tracking import tracking_uri

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in AUTH_REFUSALS:
            raise
        where, user = mask_uri(tracking_uri(cfg)), os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        if exc.error_code == "UNAUTHENTICATED":
            given = (f"the credentials of MLFLOW_TRACKING_USERNAME={user!r} were refused" if user else
                     "the token in MLFLOW_TRACKING_TOKEN was refused" if os.environ.get("MLFLOW_TRACKING_TOKEN")
                     else "no credentials were given")
            raise KadetError(f"MLflow at {where} requires authentication (HTTP 401): {given}; set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                             "in the environment") from None
        raise KadetError(f"MLflow at {where} refused {user or 'this user'} (HTTP 403, permission denied) on "
                         f"{cfg.register.model_name}: an MLflow admin grants EDIT on the registered model") from None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def who(by: str = "") -> str:
    """Who decides: ``by``, else the user the MLflow server knows (``$MLFLOW_TRACKING_USERNAME``),
    else the login name. (A name, never a password or token.)"""
    if by:
        return by
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def figures(mv, cfg: KadetConfig) -> dict:
    """What a version had when a person decided: its gate metrics, what they were measured on and
    its gate's outcome."""
    tags = mv.tags or {}
    return {"version": str(mv.version), "metrics": version_metrics(mv, cfg.evaluation),
            "eval_kind": tags.get(EVAL_KIND_TAG, ""), "eval_data": tags.get(EVAL_TAG, ""),
            "gate": tags.get(GATE_TAG, ""), "gate_failure": tags.get(FAILURE_TAG, "")}


def tag_text(value: str) -> str:
    return value if len(value) <= TAG_LIMIT else value[: TAG_LIMIT - 3] + "..."


# ---------------------------------------------------------------- kadet gate


@dataclass
class Regate:
    """What ``kadet gate`` measured and decided."""

    name: str
    version: str
    comparison: Comparison
    #: the gate's decision on this data, and the final one (the compare-and-set may still refuse)
    decision: Decision
    final: Decision
    incumbent_metrics: dict[str, float]
    champion_before: str = ""
    metrics: tuple[str, str] = ("ndcg@10", "recall@100")

    @property
    def promoted(self) -> bool:
        return self.final.promote

    def summary(self) -> str:
        nd, rc = self.metrics
        c, v = self.comparison, self.version
        row = lambda m: (f"{display(m)}: base {c.base[m]:.4f}, v{v} {c.candidate[m]:.4f}, "  # noqa: E731
                         f"{self.decision.incumbent} {self.incumbent_metrics[m]:.4f}")
        lines = [f"kadet gate: {self.name} v{v} on {c.queries} judged queries in {c.data_dir} ({c.retriever})",
                 row(nd), row(rc)]
        if c.gain(nd):
            lines.append(gain_text(c.gain(nd), nd))
        if self.promoted:
            lines.append(f"passed: v{v} is now the champion (was {'v' + self.champion_before if self.champion_before else 'none'})")
        else:
            lines += [f"refused: {self.final.reason}",
                      f"v{v} keeps its alias, the champion stays ({'v' + self.champion_before if self.champion_before else 'none'}); "
                      f"to override the gate as a person: kadet promote --version {v} --reason TEXT"]
        return "\n".join(lines)


def need_judged(cfg: KadetConfig) -> None:
    """``kadet gate`` decides on judged queries only: say how to get them when there are none."""
    from kadet.kit.data import eval_kind

    if not cfg.data.data_dir:
        raise KadetError("kadet gate: no data: pass --data DIR (the folder kadet judge exported to)")
    if eval_kind(cfg.data.data_dir, cfg.data.split, cfg.data.qrels, cfg.evaluation.kind) != "gold":
        raise KadetError(f"kadet gate: {cfg.data.data_dir} has no judged queries (queries.jsonl + "
                         f"qrels/{cfg.data.split}.tsv): judge real queries with `kadet judge --data DIR --queries Q "
                         "--model M`, export them, then gate on that folder")


def regate(cfg: KadetConfig, spec: str, out: str | Path | None = None, evaluate_fn=None) -> Regate:
    """Gate version ``spec`` again on ``cfg.data`` as it is now, with the pipeline's rules and
    against the current champion; promote it if it passes (:func:`promote`), else record why
    (``kadet.gate_failure``; its alias stays). Logged as an MLflow run ``gate``."""
    from kadet.registry import tracking
    from kadet.stages.evaluate import compare

    reg, e = cfg.register, cfg.evaluation
    c = tracking.client(cfg)
    mv = resolve_version(c, reg, spec)
    version = str(mv.version)
    champ = alias_version(c, reg.model_name, reg.champion_alias)
    if champ is not None and str(champ.version) == version:
        raise KadetError(f"v{version} is already the {reg.champion_alias} of {reg.model_name}: nothing to gate")
    need_judged(cfg)
    key = f"gate-v{version}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    out = Path(out or Path(cfg.work_dir) / "gate" / key)
    with tracking.stage_run(cfg, "gate", key):
        folder = version_folder(cfg, c, mv, out / "model")
        comp = compare(cfg, str(folder), out, base=(mv.tags or {}).get("kadet.base_model") or cfg.retrieval.model)
        cand = {k: float(comp.candidate[k]) for k in (e.ndcg, e.recall)}
        inc, inc_name = incumbent_metrics(cfg, c, comp, evaluate_fn or evaluate_model)
        decision = decide(cand, inc, reg, inc_name, comp.gain(e.ndcg), e, comp.kind)
        record_regate(cfg, c, mv, comp, cand, champ, decision)
        log_decision(cfg, c, version, decision, cand, inc, comp)
    tracking.finish_parent(cfg, key)
    if decision.promote:
        final = promote(cfg, version)
    else:
        final = decision
        c.set_model_version_tag(reg.model_name, version, GATE_TAG, "failed")
        c.set_model_version_tag(reg.model_name, version, FAILURE_TAG, tag_text(decision.reason))
    return Regate(reg.model_name, version, comp, decision, final, inc, str(champ.version) if champ else "",
                  (e.ndcg, e.recall))


def record_regate(cfg: KadetConfig, c, mv, comp: Comparison, cand: dict[str, float], champ,
                  decision: Decision) -> None:
    """The version's gate figures become this measurement (metrics, the data they rest on, whom it
    was decided against); what it had before and the outcome are kept as tags."""
    reg, e, version = cfg.register, cfg.evaluation, str(mv.version)
    tags = {REGATE_BEFORE_TAG: tag_text(json.dumps(figures(mv, cfg))), EVAL_TAG: comp.eval_data,
            **{metric_tag(k): f"{v:.6f}" for k, v in cand.items()},
            metric_tag(f"base_{e.ndcg}"): f"{comp.base[e.ndcg]:.6f}",
            DECIDED_TAG: str(champ.version) if champ else "",
            REGATE_TAG: tag_text(f"{now()} by {who()}: {'passed' if decision.promote else decision.reason} "
                                 f"({comp.queries} judged queries in {comp.data_dir}, {comp.eval_data})")}
    for k, v in tags.items():
        c.set_model_version_tag(reg.model_name, version, k, v)


# ---------------------------------------------------------------- kadet promote


@dataclass
class HandPromotion:
    """What ``kadet promote`` did."""

    name: str
    version: str
    alias: str
    replaced: str                  # the version the alias pointed at before ("" none)
    corpus: str                    # the corpus check, in words
    tags: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        was = f"v{self.replaced}" if self.replaced else "none"
        if self.replaced == self.version:
            head = f"kadet promote: v{self.version} already was the {self.alias} of {self.name}; the decision is recorded"
        else:
            head = f"kadet promote: {self.name} v{self.version} is now the {self.alias} (was {was})"
        by = self.tags[MANUAL_TAGS["by"]]
        return "\n".join([head, f"by {by} at {self.tags[MANUAL_TAGS['at']]}: {self.tags[MANUAL_TAGS['reason']]}",
                          f"corpus: {self.corpus}",
                          f"recorded on the version as tags {', '.join(sorted(self.tags))}"])


def corpus_check(cfg: KadetConfig, mv, champ) -> tuple[bool | None, str]:
    """Was ``mv`` trained on the documents of the corpus (``cfg.data``, else the champion's)?
    ``(True, why)``, ``(False, why)``, or ``(None, why)`` when it cannot be told."""
    from kadet.kit.data import corpus_file, read_corpus
    from kadet.stages.fingerprint import changes, changes_text, document_digests, read_digests

    mine, v = (mv.tags or {}).get(CORPUS_TAG, ""), f"v{mv.version}"
    if cfg.data.data_dir:
        where = f"the corpus in {cfg.data.data_dir}"
        new = document_digests(read_corpus(corpus_file(cfg.data.data_dir)), cfg.data.title_separator)
    elif champ is not None and str(champ.version) != str(mv.version):
        theirs = (champ.tags or {}).get(CORPUS_TAG, "")
        where, new = f"the champion v{champ.version}'s corpus", read_digests(cfg.work_dir, theirs)
        if mine and mine == theirs:
            return True, f"{v} was trained on {where} ({mine})"
        if new is None:
            return None, f"cannot tell: the champion v{champ.version}'s document list is not in this work dir"
    else:
        return None, "cannot tell: no --data and no other champion to compare with"
    if not mine:
        return None, f"cannot tell: {v} has no corpus fingerprint (registered without its lineage)"
    old = read_digests(cfg.work_dir, mine)
    if old is None:
        return None, f"cannot tell: {v}'s document list ({mine}) is not in this work dir"
    ch = changes(old, new)
    if ch["added"] or ch["changed"] or ch["removed"]:
        return False, f"{v} was trained on other documents than {where}: {changes_text(ch)}"
    return True, f"{v} was trained on the documents of {where} ({ch['unchanged']} documents)"


def promote_by_hand(cfg: KadetConfig, spec: str, reason: str, to: str = "champion", by: str = "",
                    force: bool = False) -> HandPromotion:
    """A person's decision: point the ``to`` alias (champion or challenger) at version ``spec``,
    compare-and-set; record who, when, why and the figures on the version; the other alias and
    the stale gate tags go. Refuses a version trained on other documents (:func:`corpus_check`)
    and taking the champion's own version down to challenger (no champion left) unless ``force``."""
    from kadet.registry.tracking import client

    reg, c = cfg.register, client(cfg)
    if not reason.strip():
        raise KadetError("kadet promote: --reason is required: say why (it is recorded on the version)")
    if to not in ("champion", "challenger"):
        raise KadetError(f"kadet promote: --to {to!r}: champion or challenger")
    mv = resolve_version(c, reg, spec)
    version = str(mv.version)
    champ, chall = (alias_version(c, reg.model_name, a) for a in (reg.champion_alias, reg.challenger_alias))
    same, corpus = corpus_check(cfg, mv, champ)
    if same is False and not force:
        raise KadetError(f"kadet promote: {corpus}; its figures say nothing about this corpus. "
                         "Pass --force to promote it anyway (recorded on the version)")
    if to == "challenger" and champ is not None and str(champ.version) == version and not force:
        raise KadetError(f"kadet promote: v{version} is the champion; making it challenger leaves no champion. "
                         "Promote another version instead, or pass --force")
    alias = reg.champion_alias if to == "champion" else reg.challenger_alias
    before = champ if to == "champion" else chall
    set_alias_checked(c, reg, alias, version)
    corpus = corpus if same is not False else f"forced: {corpus}"
    tags = manual_tags(cfg, mv, champ, reason, alias, before, corpus, by)
    for k, v in tags.items():
        c.set_model_version_tag(reg.model_name, version, k, v)
    tidy_after_hand(c, reg, version, to)
    return HandPromotion(reg.model_name, version, alias, str(before.version) if before else "", corpus, tags)


def manual_tags(cfg: KadetConfig, mv, champ, reason: str, alias: str, before, corpus: str, by: str) -> dict[str, str]:
    """The ``kadet.manual.*`` tags: who, when, why, where to, what it replaced, the figures."""
    facts = {"version": figures(mv, cfg), "champion_before": figures(champ, cfg) if champ is not None else None}
    return {MANUAL_TAGS["by"]: who(by), MANUAL_TAGS["at"]: now(), MANUAL_TAGS["reason"]: tag_text(reason.strip()),
            MANUAL_TAGS["to"]: alias, MANUAL_TAGS["replaced"]: str(before.version) if before is not None else "",
            MANUAL_TAGS["figures"]: tag_text(json.dumps(facts)), MANUAL_TAGS["corpus"]: tag_text(corpus)}


def set_alias_checked(c, reg: RegisterConfig, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``, wait ``register.promote_settle_s``, read it back: a run that
    moved it meanwhile wins, and the person is told to look again (nothing is recorded)."""
    c.set_registered_model_alias(reg.model_name, alias, version)
    time.sleep(reg.promote_settle_s)
    now_at = alias_version(c, reg.model_name, alias)
    if now_at is None or str(now_at.version) != version:
        raise KadetError(f"kadet promote: the {alias} alias of {reg.model_name} moved to "
                         f"v{now_at.version if now_at else 'none'} meanwhile (another run promoted): nothing recorded "
                         f"on v{version}; look at it and decide again")


def tidy_after_hand(c, reg: RegisterConfig, version: str, to: str) -> None:
    """After a person moved an alias to ``version``: the other alias leaves it; as champion its
    failed-gate tag goes and its gate tag says who decided; its pending inputs fingerprint is
    settled (it has an alias now)."""
    other = reg.challenger_alias if to == "champion" else reg.champion_alias
    holder = alias_version(c, reg.model_name, other)
    if holder is not None and str(holder.version) == version:
        c.delete_registered_model_alias(reg.model_name, other)
    if to == "champion":
        c.set_model_version_tag(reg.model_name, version, GATE_TAG, "promoted by hand")
        if FAILURE_TAG in (c.get_model_version(reg.model_name, version).tags or {}):
            c.delete_model_version_tag(reg.model_name, version, FAILURE_TAG)
    settle_inputs(c, reg, version)
