"""The registry gate: register the candidate, promote it to ``champion`` only if it earns it.

The candidate (a sentence-transformers folder) is logged with ``mlflow.sentence_transformers``
and becomes a new version of ``register.model_name``. It is promoted to the champion alias only
if all hold (:func:`decide`; nDCG@10 and Recall@100 are ``evaluation.ndcg_k`` / ``recall_k``):

1. every figure and gate setting compared is a finite number (a NaN never promotes);
2. nDCG@10 >= ``register.ndcg_floor``;
3. nDCG@10 >= the incumbent's nDCG@10 on the *same* test data + ``register.min_delta``;
4. Recall@100 >= the incumbent's Recall@100 - ``register.max_recall_drop``;
5. with ``register.require_significant_gain`` (the default) and the gain measured
   (``comparison.json``'s ``delta``), its nDCG@10 gain over the base model is not noise: the lower
   end of the gain's paired bootstrap interval at ``register.confidence`` is above 0;
6. the evaluation is gold (judged queries), unless ``register.silver_promotes`` accepts silver.

Figures that tie to 1e-9 count as equal. The reasons list every rule that fails, except that a
figure that is not finite ends the check (its reason and silver's are the only ones).

The incumbent is the current champion; while there is none, it is the base model measured in
the same evaluation run. A champion measured on other test data (its version tag
``kadet.eval_data`` differs) is evaluated again on this data first. Rerunning with the same
model folder finds its existing version (tag ``kadet.model_fingerprint``) instead of
registering a duplicate, and a version that already is champion stays champion.

The decision and the aliases are two steps, as the pipeline runs them (two tasks, the second
chosen by the first's outcome); the aliases are :mod:`kadet.registry.promotion`'s: a candidate
that passed is promoted by ``promote``, a compare-and-set that decides again if the champion moved
meanwhile; one that failed gets the challenger alias and a ``kadet.gate_failure`` tag from
``mark_challenger``; the champion stays. (A person gates an existing version again on new judged
queries, or promotes one by hand, there too.)

    r = register_candidate(cfg, model_dir, comparison, pipeline_run)   # version + decision
    if r.decision.promote:
        promotion.promote(cfg, r.version)                            # may still refuse
    else:
        promotion.mark_challenger(cfg, r.version, r.decision.reason)

The inputs fingerprint (``kadet.inputs_fingerprint``: "nothing changed since this version") is
written only once the version has its alias or its refusal is recorded (``promotion.settle_inputs``,
the last write of ``promote`` and ``mark_challenger``); the register step keeps it meanwhile as
``kadet.inputs_pending``. A registry step that fails half way therefore never makes the next run
say "no change since vN" for a version that is neither champion nor challenger: that run reuses
the version (same model folder) and finishes its registration.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kadet.core.storage import mask_uri
from kadet.core.io import read_text
from kadet.stages.distill import card
from kadet.kit.comparison import SILVER_REFUSAL, Comparison, display, kind_text, metric_name
from kadet.core import faults
from kadet.core.config import EvaluationConfig, KadetConfig, RegisterConfig
from kadet.core.errors import KadetError
from kadet.stages.fingerprint import CHANGES_TAG, CORPUS_TAG, DOCUMENTS_TAG, INPUTS_TAG, PARENT_TAG
from kadet.kit.models import model_fingerprint
from kadet.kit.towers import quiet_router_lengths
from kadet.registry.tracking import EVAL_DATA_TAG, EVAL_KIND_TAG, GATE_TAG, MODEL_VERSION_TAG, PIPELINE_TAG

log = logging.getLogger(__name__)

#: The gate's two metrics are named by ``evaluation.ndcg_k`` / ``recall_k`` (``EvaluationConfig.ndcg``,
#: ``.recall``: "ndcg@10", "recall@100" by default); a version keeps its values in the tags
#: ``metric_tag(name)`` ("kadet.ndcg_at_10"), measured on the data named by EVAL_TAG.
DEFAULT_METRICS = EvaluationConfig()
FINGERPRINT_TAG = "kadet.model_fingerprint"
EVAL_TAG = EVAL_DATA_TAG
FAILURE_TAG = "kadet.gate_failure"
#: The champion version the register step decided against ("" = none, the base model).
DECIDED_TAG = "kadet.decided_against"
#: The inputs fingerprint a version waits for its alias with (:func:`settle_inputs`).
PENDING_INPUTS_TAG = "kadet.inputs_pending"
#: Metrics that tie to float precision count as equal.
EPS = 1e-9


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    incumbent: str = "none"   # "champion v3", "base model", or "none"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "passed"


def metric_tag(name: str) -> str:
    """The model-version tag holding metric ``name``: "ndcg@10" -> "kadet.ndcg_at_10"."""
    return "kadet." + metric_name(name)


def decide(candidate: Mapping[str, float], incumbent: Mapping[str, float] | None, gate: RegisterConfig,
           incumbent_name: str = "incumbent", gain: Mapping[str, float] | None = None,
           metrics: EvaluationConfig = DEFAULT_METRICS, kind: str = "gold") -> Decision:
    """Apply the gates; ``incumbent`` = metrics on the same test data, or None; ``gain`` = the
    paired bootstrap of the candidate's nDCG over the base model (``kadet.stages.evaluate.paired_bootstrap``);
    ``metrics`` names the two gate metrics (``evaluation.ndcg_k`` / ``recall_k``); ``kind`` is the
    evaluation's (gold or silver: silver never promotes unless ``register.silver_promotes``)."""
    reasons = [SILVER_REFUSAL] if kind == "silver" and not gate.silver_promotes else []
    NDCG, RECALL = metrics.ndcg, metrics.recall
    N, R = display(NDCG), display(RECALL)
    nd, rc = candidate[NDCG], candidate[RECALL]
    numbers = {f"candidate {N}": nd, f"candidate {R}": rc, "register.ndcg_floor": gate.ndcg_floor,
               "register.min_delta": gate.min_delta, "register.max_recall_drop": gate.max_recall_drop}
    if incumbent is not None:
        numbers |= {f"{incumbent_name} {N}": incumbent[NDCG], f"{incumbent_name} {R}": incumbent[RECALL]}
    bad = [k for k, v in numbers.items() if not math.isfinite(float(v))]
    if bad:  # NaN compares False with everything: never let it through
        return Decision(promote=False, reasons=[*reasons, f"not a finite number: {', '.join(bad)}"],
                        incumbent=incumbent_name if incumbent else "none")
    if nd < gate.ndcg_floor - EPS:
        reasons.append(f"{N} {nd:.4f} below the floor {gate.ndcg_floor:.4f}")
    if incumbent is not None:
        need = incumbent[NDCG] + gate.min_delta
        if nd < need - EPS:
            reasons.append(f"{N} {nd:.4f} below {incumbent_name}'s {incumbent[NDCG]:.4f} + {gate.min_delta:g}")
        floor = incumbent[RECALL] - gate.max_recall_drop
        if rc < floor - EPS:
            reasons.append(f"{R} {rc:.4f} dropped more than {gate.max_recall_drop:g} "
                           f"below {incumbent_name}'s {incumbent[RECALL]:.4f}")
    if gate.require_significant_gain and gain is not None:
        low = float(gain["ci_low"])
        if not math.isfinite(low) or low <= 0.0:
            reasons.append(f"{N} gain over the base model {gain['mean']:+.4f} is within noise: its "
                           f"{gate.confidence:.0%} paired bootstrap interval over {gain['queries']} queries is "
                           f"[{low:+.4f}, {gain['ci_high']:+.4f}]")
    return Decision(promote=not reasons, reasons=reasons, incumbent=incumbent_name if incumbent else "none")


@dataclass
class Registration:
    name: str
    version: str
    decision: Decision
    candidate: dict[str, float]
    incumbent_metrics: dict[str, float] | None
    reused: bool = False
    #: corpus fingerprint, documents, parent version, changes since it (:func:`lineage`)
    lineage: dict = field(default_factory=dict)


def pip_requirements() -> list[str]:
    """Explicit requirements for the logged model: the versions installed here, without a local
    build label (``torch==2.13.0``, not ``2.13.0+cpu``, which a serving image's index lacks)."""
    from importlib.metadata import version

    return [f"{p}=={version(p).split('+')[0]}" for p in ("sentence-transformers", "transformers", "torch",
                                                          "tokenizers", "safetensors", "numpy")]


#: What the served model encodes when a request names no ``task``: queries (documents are indexed
#: in batch; a query-side model's ``encode()`` would route queries to the document tower).
SERVING_PARAMS = {"task": "query"}
SERVING_EXAMPLE = ["what does aspirin do to the risk of a heart attack"]


def serving_signature(st):
    """Input strings, output embeddings, and the ``task`` parameter (``query`` or ``document``)
    that MLflow's pyfunc passes to ``encode`` (as ``encode_query``/``encode_document`` do)."""
    from mlflow.models import infer_signature

    return infer_signature(SERVING_EXAMPLE, st.encode_query(SERVING_EXAMPLE), params=SERVING_PARAMS)


def find_version(client, name: str, fingerprint: str):
    """The version of ``name`` registered from this model folder content, if any."""
    hits = [v for v in model_versions(client, name) if (v.tags or {}).get(FINGERPRINT_TAG) == fingerprint]
    return min(hits, key=lambda v: int(v.version)) if hits else None


def trained_on(cfg: KadetConfig, inputs: str) -> str:
    """The newest version of ``register.model_name`` that went through the gate (it carries
    ``kadet.inputs_fingerprint``, written last), if it was trained on ``inputs`` (same corpus
    content, same settings); else "". Only the newest counts: a corpus that went back to an
    earlier state (documents removed again) is a change since the newest version."""
    from kadet.registry.tracking import client

    gated = [v for v in model_versions(client(cfg), cfg.register.model_name) if (v.tags or {}).get(INPUTS_TAG)]
    newest = max(gated, key=lambda v: int(v.version), default=None)
    return str(newest.version) if newest is not None and newest.tags[INPUTS_TAG] == inputs else ""


def model_versions(client, name: str) -> list:
    """Every version of model ``name`` (none if there is no such model). Any other error of the
    store is raised: a registry that cannot answer must fail the step (which is retried), never
    pass for an empty one (a duplicate version, a needless retrain)."""
    from mlflow.exceptions import MlflowException

    from kadet.registry.tracking import filter_equals

    try:
        return [v for v in client.search_model_versions(filter_equals("name", name)) if v.name == name]
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise


def lineage(cfg: KadetConfig, client, prepared_dir: str | Path | None, exclude: str = "") -> dict:
    """Where a new version comes from: the corpus it was trained on (fingerprint, documents),
    its parent (the champion, else the newest version other than ``exclude``, the version itself
    when a retried register step finds it registered) and what changed in the corpus since the
    parent was trained. Call before the new version exists, or pass it as ``exclude``."""
    from kadet.stages.fingerprint import changes, read_digests
    from kadet.core.manifest import Manifest

    if prepared_dir is None or not (Path(prepared_dir) / "manifest.json").exists():
        return {}
    m = Manifest.read(prepared_dir)
    fp = m.extra.get("fingerprint") or {}
    reg = cfg.register
    champ = alias_version(client, reg.model_name, reg.champion_alias)
    parent = champ if champ is not None and str(champ.version) != exclude else max(
        (v for v in model_versions(client, reg.model_name) if str(v.version) != exclude),
        key=lambda v: int(v.version), default=None)
    parent_fp = (parent.tags or {}).get(CORPUS_TAG, "") if parent is not None else ""
    new = read_digests(cfg.work_dir, fp.get("corpus", ""))
    return {"corpus_fingerprint": fp.get("corpus", ""), "inputs_fingerprint": fp.get("inputs", ""),
            "documents": int(m.counts.get("corpus", 0)), "parent_version": str(parent.version) if parent else "",
            "changes": changes(read_digests(cfg.work_dir, parent_fp), new) if parent is not None and new else None}


def lineage_lines(lin: Mapping) -> list[str]:
    """The lineage as the report and the model card say it (empty when unknown)."""
    tags = lineage_tags(lin)
    if not tags:
        return []
    return [f"corpus fingerprint {tags[CORPUS_TAG]}, {tags[DOCUMENTS_TAG]} documents",
            f"parent version: {tags[PARENT_TAG]}", f"corpus changes since the parent: {tags[CHANGES_TAG]}"]


def lineage_tags(lin: Mapping) -> dict[str, str]:
    from kadet.stages.fingerprint import changes_text

    if not lin:
        return {}
    return {CORPUS_TAG: lin["corpus_fingerprint"], INPUTS_TAG: lin["inputs_fingerprint"],
            DOCUMENTS_TAG: str(lin["documents"]), PARENT_TAG: lin["parent_version"] or "none",
            CHANGES_TAG: changes_text(lin["changes"]) if lin["parent_version"] else "first version"}


def find_champion(cfg: KadetConfig, scratch: Path):
    """The champion of ``register.model_name`` as ``distill.init: champion`` starts from it
    (:class:`kadet.stages.distill.start.Champion`: version, local folder, tags); its files are
    downloaded into ``scratch`` when the registry is remote. Raises ``NoChampion`` saying why
    there is none."""
    from kadet.registry import tracking
    from kadet.stages.distill.start import Champion, NoChampion

    reg, uri = cfg.register, tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise NoChampion(f"there is no MLflow store at {mask_uri(uri)} yet")
    c = tracking.client(cfg)
    mv = alias_version(c, reg.model_name, reg.champion_alias)
    if mv is None:
        raise NoChampion(f"{reg.model_name} has no {reg.champion_alias!r} version yet in {mask_uri(uri)}")
    source = c.get_model_version_download_uri(reg.model_name, mv.version)
    local = "://" not in source or source.startswith("file:")
    folder = local_model_dir(source, tracking_uri=uri, dst_path=None if local else scratch / "champion")
    return Champion(str(mv.version), folder, dict(mv.tags or {}))


def alias_version(client, name: str, alias: str):
    """The version an alias (champion, challenger) of model ``name`` points at, or None. Any other
    error of the store is raised (a registry that cannot answer is not one without a champion)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such model; alias unset
            return None
        raise


def local_model_dir(model_uri: str, tracking_uri: str | None = None, dst_path: str | Path | None = None) -> Path:
    """Download a logged sentence-transformers model; the folder ``SentenceTransformer`` loads.
    A ``models:/`` URI resolves through the process's registry URI; an artifact URI (a version's
    ``get_model_version_download_uri``) through ``tracking_uri``. ``dst_path``: where the files
    go (default: a new temporary folder; a local store's files are used where they are)."""
    import mlflow

    root = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst_path) if dst_path else None,
                                                    tracking_uri=tracking_uri))
    for cand in (root / "model.sentence_transformer", root):
        if (cand / "modules.json").exists():
            return cand
    raise KadetError(f"register: {model_uri} holds no sentence-transformers folder")


def evaluate_model(cfg: KadetConfig, model_dir: str | Path, eval_dir: str | Path | None = None) -> dict[str, float]:
    """The model's figures on the run's evaluation data: ``cfg.data``, or the BEIR folder ``eval_dir``
    (a silver run's held-out set, which the evaluate step wrote)."""
    from kadet.kit.data import load_beir
    from kadet.stages.evaluate import evaluate

    ds = load_beir(str(eval_dir), "test") if eval_dir else None
    return evaluate(cfg, model=str(model_dir), retriever=cfg.evaluation.retriever, dataset=ds).metrics


def incumbent_metrics(cfg: KadetConfig, client, comparison: Comparison,
                      evaluate_fn: Callable[[KadetConfig, Path], dict] = evaluate_model):
    """``(metrics on this test data, label)`` of the champion, or of the base model if none."""
    reg = cfg.register
    champ = alias_version(client, reg.model_name, reg.champion_alias)
    if champ is None:
        return dict(comparison.base), "base model"
    tagged = version_metrics(champ, cfg.evaluation)
    if (champ.tags or {}).get(EVAL_TAG) == comparison.eval_data and tagged is not None:
        return tagged, f"champion v{champ.version}"
    log.info("champion v%s was measured on other test data: evaluating it on this data", champ.version)
    metrics = evaluate_fn(cfg, local_model_dir(f"models:/{reg.model_name}/{champ.version}"))
    e = cfg.evaluation
    return {e.ndcg: metrics[e.ndcg], e.recall: metrics[e.recall]}, f"champion v{champ.version} (re-evaluated)"


def register_candidate(cfg: KadetConfig, model_dir: str | Path, comparison: Comparison, pipeline_run: str = "",
                       evaluate_fn: Callable[[KadetConfig, Path], dict] | None = None,
                       prepared_dir: str | Path | None = None, eval_dir: str | Path | None = None) -> Registration:
    """Make the candidate a model version (or find it) and decide the gate. Needs an active run.
    ``prepared_dir`` (the prepare step's output) gives the version its lineage; ``eval_dir``, a
    silver run's held-out set, is where a champion measured on other data is evaluated again."""
    from kadet.registry.tracking import client as get_client

    reg, e = cfg.register, cfg.evaluation
    c = get_client(cfg)
    fp = model_fingerprint(model_dir)
    cand = {e.ndcg: float(comparison.candidate[e.ndcg]), e.recall: float(comparison.candidate[e.recall])}
    existing = find_version(c, reg.model_name, fp)
    if existing is None:
        lin = lineage(cfg, c, prepared_dir)
        version, model_id = log_version(model_dir, reg.model_name, fp)
        faults.point("register:created")   # fault injection (tests only): a version without its gate's tags
    else:
        version, model_id = str(existing.version), ""
        log.info("model folder already registered as %s v%s: reusing it", reg.model_name, version)
        # a retried step whose first try registered the version but not its lineage: write it now
        lin = lineage(cfg, c, prepared_dir, exclude=version) if CORPUS_TAG not in (existing.tags or {}) else {}
    inputs = lin.get("inputs_fingerprint") or prepared_inputs(prepared_dir)
    tags = {FINGERPRINT_TAG: fp, EVAL_TAG: comparison.eval_data, **{metric_tag(k): f"{v:.6f}" for k, v in cand.items()},
            "kadet.base_model": str(comparison.models["base"]),
            metric_tag(f"base_{e.ndcg}"): f"{comparison.base[e.ndcg]:.6f}",
            **{k: v for k, v in lineage_tags(lin).items() if k != INPUTS_TAG}}
    if pipeline_run:
        tags[PIPELINE_TAG] = pipeline_run
    if inputs:   # becomes kadet.inputs_fingerprint once the version has its alias (promotion.settle_inputs)
        tags[PENDING_INPUTS_TAG] = inputs
    for k, v in tags.items():
        c.set_model_version_tag(reg.model_name, version, k, v)
    champ = alias_version(c, reg.model_name, reg.champion_alias)
    # whom this decision is against: promote() decides again if the champion moves meanwhile
    c.set_model_version_tag(reg.model_name, version, DECIDED_TAG, str(champ.version) if champ else "")
    if champ is not None and str(champ.version) == version:  # rerun of the promoted candidate
        decision = Decision(True, [], incumbent=f"champion v{version} (itself)")
        return Registration(reg.model_name, version, decision, cand, cand, reused=existing is not None, lineage=lin)
    inc, inc_name = incumbent_metrics(cfg, c, comparison,
                                      evaluate_fn or functools.partial(evaluate_model, eval_dir=eval_dir))
    decision = decide(cand, inc, reg, inc_name, comparison.gain(e.ndcg), e, comparison.kind)
    log_decision(cfg, c, version, decision, cand, inc, comparison)
    if existing is None:
        attach_card(cfg, c, model_dir, comparison, version, decision, model_id, lin)
    return Registration(reg.model_name, version, decision, cand, inc, reused=existing is not None, lineage=lin)


def prepared_inputs(prepared_dir: str | Path | None) -> str:
    """The inputs fingerprint the prepare step recorded in its manifest ("" if none)."""
    from kadet.core.manifest import Manifest

    if prepared_dir is None or not (Path(prepared_dir) / "manifest.json").exists():
        return ""
    return str((Manifest.read(prepared_dir).extra.get("fingerprint") or {}).get("inputs", ""))


def log_version(model_dir: str | Path, model_name: str, fingerprint: str = "") -> tuple[str, str]:
    """Log the folder as an MLflow sentence-transformers model on the active run and register it
    as a new version of ``model_name``: ``(version, logged model id)``. The version is created with
    its ``kadet.model_fingerprint`` tag, so a retried register step finds it instead of registering
    a duplicate."""
    import mlflow
    from sentence_transformers import SentenceTransformer

    quiet_router_lengths()
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    info = mlflow.sentence_transformers.log_model(st, name="model", pip_requirements=pip_requirements(),
                                                  signature=serving_signature(st), input_example=SERVING_EXAMPLE)
    tags = {FINGERPRINT_TAG: fingerprint} if fingerprint else None
    return str(mlflow.register_model(info.model_uri, model_name, tags=tags).version), info.model_id


def log_decision(cfg: KadetConfig, c, version: str, decision: Decision, cand: Mapping[str, float],
                 inc: Mapping[str, float], comparison: Comparison) -> None:
    """The gate's figures as metrics of the active run; the decision and its kind of evaluation as
    tags of the run and the version."""
    import mlflow

    e = cfg.evaluation
    gain = comparison.gain(e.ndcg)
    if gain is not None:
        mlflow.log_metrics({metric_name(f"gate.gain_{e.ndcg}"): gain["mean"], "gate.gain_ci_low": gain["ci_low"],
                            "gate.gain_ci_high": gain["ci_high"]})
    mlflow.log_metrics({metric_name(f"gate.candidate_{k}"): v for k, v in cand.items()}
                       | {metric_name(f"gate.incumbent_{k}"): v for k, v in inc.items()}
                       | {"gate.promote": float(decision.promote)})
    c.set_model_version_tag(cfg.register.model_name, version, EVAL_KIND_TAG, comparison.kind)
    mlflow.set_tags({GATE_TAG: gate_text(decision, comparison.kind), MODEL_VERSION_TAG: version,
                     EVAL_KIND_TAG: comparison.kind})


def gate_text(decision: Decision, kind: str) -> str:
    """The gate's outcome as people read it, with the kind of evaluation it rests on."""
    what = f"{kind}: {kind_text(kind)}" + ("; judge real queries with `kadet judge`" if kind == "silver" else "")
    return f"{decision.reason} ({what})"


def usage(model_name: str, version: str, tracking_uri: str = "") -> list[str]:
    """How to use a registered version, as the run summary and report.html print it; the export
    command names the store (``--work-dir`` for kadet's local sqlite store, else its URI)."""
    where = ""
    if tracking_uri.startswith("sqlite:///") and tracking_uri.endswith("/mlflow.db"):
        where = f" --work-dir {tracking_uri.removeprefix('sqlite:///').removesuffix('/mlflow.db')}"
    elif tracking_uri:
        where = f" --set tracking.tracking_uri={mask_uri(tracking_uri)}"
    name = "" if model_name == RegisterConfig().model_name else f" --model-name {model_name}"
    return [f"kadet export --out adapted --version {version}{name}{where}: "
            "plain folders adapted/query (encode your queries) and adapted/document (index with it; for a "
            "query-side model it is the base model, so your existing index stays valid), and ONNX in adapted/onnx",
            f"or load it from MLflow: mlflow.sentence_transformers.load_model(\"models:/{model_name}/{version}\"): "
            "encode() and encode_query() give the tuned query embeddings, encode_document() the document ones"]


def card_facts(cfg: KadetConfig, comparison: Comparison, version: str, decision: Decision,
               lin: Mapping | None = None) -> dict:
    """The evaluation and registry part of the model card (:mod:`kadet.stages.distill.card`)."""
    return {"model_name": cfg.register.model_name,
            "evaluation": card.evaluation_facts(comparison, cfg.evaluation),
            "lineage": lineage_lines(lin or {}),
            "registry": {"name": cfg.register.model_name, "version": version,
                         "gate": ("" if decision.promote else "refused: ") + gate_text(decision, comparison.kind)}}


def attach_card(cfg: KadetConfig, c, model_dir: str | Path, comparison: Comparison, version: str, decision: Decision,
                model_id: str, lin: Mapping | None = None) -> None:
    """The full card (training facts from the folder, evaluation, registry version) into the
    logged model's sentence-transformers folder, the run's artifacts and the version's description."""
    import shutil
    import tempfile

    import mlflow
    from mlflow.sentence_transformers import SENTENCE_TRANSFORMERS_DATA_PATH

    with tempfile.TemporaryDirectory() as tmp:
        for name in (card.CARD, card.FACTS):
            if (Path(model_dir) / name).exists():
                shutil.copy(Path(model_dir) / name, Path(tmp) / name)
        path = card.update(tmp, **card_facts(cfg, comparison, version, decision, lin))
        for name in (card.CARD, card.FACTS):
            c.log_model_artifact(model_id, str(Path(tmp) / name), SENTENCE_TRANSFORMERS_DATA_PATH)
        mlflow.log_artifact(str(path), "model_card")
        text = read_text(path)
        c.update_model_version(cfg.register.model_name, version, description=card.split_front_matter(text)[1][:5000])


def version_metrics(version, metrics: EvaluationConfig = DEFAULT_METRICS) -> dict[str, float] | None:
    """The gate metrics a version was registered with (its tags), or None."""
    tags = version.tags or {}
    names = (metrics.ndcg, metrics.recall)
    if not all(metric_tag(n) in tags for n in names):
        return None
    return {n: float(tags[metric_tag(n)]) for n in names}
