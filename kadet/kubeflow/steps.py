"""The pipeline's steps: one function per KFP component, with MLflow tracking around the stage.

Each step takes plain strings and folder paths (a component passes its artifacts' ``.path``),
builds the config from the pipeline's YAML text plus the UI parameters, runs one stage inside
a nested MLflow run of the pipeline's parent run, and logs what that stage should show. The
components in ``kadet/kubeflow/`` are one call each into this module, so the same DAG can also be
run in one process (``benchmarks/speed/pipeline_overhead.py`` compares the two).

Layout of each step's output folder = the stage's own (see each stage module):
prepare ``corpus.jsonl``, ``passages.jsonl``; generate ``queries.jsonl``; mine
``candidates.jsonl``; label ``labels.jsonl``; distill ``model/``, ``curves.json``; evaluate
``comparison.json``; each with ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from kadet.core.storage import mask_uri
from kadet.core import io
from kadet.core.io import read_json
from kadet import __version__
from kadet.reporting import plots

from kadet.registry import tracking
from kadet.core import lifeline, progress
from kadet.core.config import KadetConfig, config_from_text, frozen_config
from kadet.core.manifest import Manifest
from kadet.core.layout import file_in

log = logging.getLogger(__name__)
# every task imports this module first: a task of a local `kadet run` ends when that run is killed
lifeline.follow_parent()


def config_step(parameters: dict) -> str:
    """The first task: the run's one config, resolved once from the run parameters (the profile,
    ``config_yaml``, then each set parameter by path: kadet/kubeflow/parameters.py), as the YAML
    text every other task reads back frozen (:func:`step_config`)."""
    from kadet.core.config import dump_config, resolve_config
    from kadet.kubeflow.parameters import settings

    cfg = resolve_config(parameters.get("profile", ""), parameters.get("config_yaml", ""), settings(parameters))
    log.info("resolved the run's config (hash %s)", cfg.hash())
    return dump_config(cfg)


def step_config(config: str, task_settings: dict | None = None) -> KadetConfig:
    """The run's resolved config (:func:`config_step`'s text), frozen; ``task_settings`` (by
    path) are what only this task sets: its shard of a sharded stage."""
    from kadet.core.config import freeze, with_settings

    if not task_settings:
        return frozen_config(config)
    return freeze(with_settings(config_from_text(config, source="resolved config"), task_settings,
                                source="task settings"))


def fingerprint_step(cfg: KadetConfig, pipeline_run: str) -> dict:
    """What the corpus holds (:func:`kadet.stages.prepare.fingerprints`) and ``unchanged_since``: the
    registered version trained on these very inputs ("" if none: the run has work to do)."""
    from kadet.stages.prepare import fingerprints
    from kadet.registry.register import trained_on

    fp = fingerprints(cfg)
    version = trained_on(cfg, fp["inputs"])
    log.info("corpus %s (%d files, %d bytes), inputs %s: %s", fp["corpus"], fp["files"], fp["bytes"], fp["inputs"],
             f"unchanged since version {version}" if version else "new")
    return {**fp, "unchanged_since": version}


def unchanged_step(cfg: KadetConfig, version: str, pipeline_run: str, summary_path: str | None = None) -> None:
    """A run with nothing new: say so on the pipeline's parent run (no stage runs, no version) and,
    with ``summary_path``, in the KFP run page's Markdown."""
    from kadet.reporting import summary

    name = cfg.register.model_name
    text = unchanged_text(name, version)
    tag_parent(cfg, pipeline_run, {tracking.UNCHANGED_TAG: version, tracking.GATE_TAG: text})
    write_summary(summary_path, lambda: summary.no_change(name, version, text,
                                                          tracking.links(cfg, pipeline_run, name, version)))


def write_summary(path: str | None, text) -> None:
    """``text()`` (Markdown) to ``path``, the task's ``Markdown`` output; nothing without a path."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text(), encoding="utf-8")


def tag_parent(cfg: KadetConfig, pipeline_run: str, tags: dict[str, str]) -> None:
    """Tags on the pipeline's parent run: how a run that stops early says why."""
    c = tracking.client(cfg)
    parent = tracking.parent_run_id(cfg, pipeline_run)
    for key, value in tags.items():
        c.set_tag(parent, key, value)


def unchanged_text(model_name: str, version: str) -> str:
    return (f"no change since version {version}: the corpus holds what {model_name} v{version} was trained on and "
            "the settings are the same; nothing was trained or registered")


def preflight_step(cfg: KadetConfig, out: str, pipeline_run: str) -> str:
    """The teacher's lead over the base on the judged queries (:mod:`kadet.stages.preflight`), before any
    work: returns "" to go on, else why there is nothing to learn (the run then trains nothing)."""
    import mlflow

    from kadet.stages.preflight import check

    with tracking.stage_run(cfg, "preflight", pipeline_run, out=out):
        Path(out).mkdir(parents=True, exist_ok=True)
        with reusable(cfg, "preflight", out, {"data": cfg.data.data_dir, "qrels": cfg.data.qrels}) as reused:
            result = (preflight_result(out) or None) if reused else check(cfg, out)
        tracking.log_manifest(Manifest.read(out), out)
        if result is None:
            mlflow.set_tag("kadet.preflight", "not measured: no judged queries (silver run) or distill.preflight off")
            return ""
        mlflow.log_metrics({"preflight.base": result["base"], "preflight.teacher": result["teacher"],
                            "preflight.lead": result["lead"], "preflight.lead_ci_low": result["ci_low"],
                            "preflight.lead_ci_high": result["ci_high"]})
        mlflow.set_tag("kadet.preflight", result["message"])
        mlflow.log_artifact(str(Path(out) / "preflight.json"))
    return "" if result["go"] else result["message"]


#: The pre-flight figures the KFP run page shows (the preflight task's ``Metrics``).
PREFLIGHT_FIGURES = ("base", "teacher", "lead", "ci_low", "ci_high", "queries", "min_teacher_lead")


def preflight_result(out: str | None) -> dict:
    """``preflight.json`` of a pre-flight output folder ({} when the lead was not measured)."""
    path = Path(out) / "preflight.json" if out else None
    return read_json(path) if path and path.exists() else {}


def preflight_figures(out: str) -> dict[str, float]:
    """The pre-flight figures (:data:`PREFLIGHT_FIGURES`) of a pre-flight output folder, as numbers."""
    pre = preflight_result(out)
    return {f"preflight_{k}": float(pre[k]) for k in PREFLIGHT_FIGURES if k in pre}


def nothing_to_learn_step(cfg: KadetConfig, reason: str, pipeline_run: str, preflight_dir: str | None = None,
                          summary_path: str | None = None) -> None:
    """A run the pre-flight check stopped: say why on the pipeline's parent run (no version) and,
    with ``summary_path``, in the KFP run page's Markdown (the figures from ``preflight_dir``)."""
    from kadet.reporting import summary

    tag_parent(cfg, pipeline_run, {tracking.NOTHING_TO_LEARN_TAG: reason, tracking.GATE_TAG: reason})
    pre = preflight_result(preflight_dir)
    write_summary(summary_path, lambda: summary.nothing_to_learn(reason, pre, tracking.links(cfg, pipeline_run)))


def setting_contents(cfg: KadetConfig) -> dict[str, str]:
    """The content digests of what the settings name by path or packaged name (models, a .gguf
    file, ``dense:PATH`` retrievers): a setting's string stays the same when the folder it names
    is replaced. The data and the work dir are not settings of this kind (a stage's inputs are)."""
    from kadet.core.manifest import digest
    from kadet.kit.models import PACKAGED_MODELS, model_fingerprint, resolve_model_path

    found: dict[str, str] = {}

    def visit(key: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}.{k}" if key else k, v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{key}[{i}]", v)
        elif isinstance(value, str) and value and key != "work_dir" and not key.startswith("data."):
            text = value.split(":", 1)[1] if ":" in value and "://" not in value else value
            if text in PACKAGED_MODELS:
                found[key] = model_fingerprint(resolve_model_path(text))
            elif "://" not in text and len(text) < 4096 and Path(text).expanduser().exists():
                path = Path(text).expanduser()
                found[key] = model_fingerprint(path) if path.is_dir() else digest(path)

    visit("", cfg.to_dict())
    return found


#: On a stage run whose output was taken from an earlier run: that run's key.
REUSED_TAG = "kadet.reused_from"


@contextlib.contextmanager
def reusable(cfg: KadetConfig, stage: str, out: str, inputs: dict[str, str | Sequence[str] | None],
             extra: dict | None = None) -> Iterator[bool]:
    """The stage's whole output from an earlier run with the same settings and the same ``inputs``
    (their content digests), if one was kept (kadet/core/reuse.py ``finished``): yields True when
    ``out`` now holds it (the block skips the stage's work; the stage run is tagged with the earlier
    run), else False (the block does the work, and ``out`` is kept once it succeeds). Inputs not
    on this machine (URIs) are never digested: such a stage always runs."""
    from kadet.core.manifest import digest
    from kadet.core.reuse import finished

    paths = {k: [v] if isinstance(v, str) or v is None else list(v) for k, v in inputs.items()}
    if any("://" in p for ps in paths.values() for p in ps if p):
        yield False
        return
    depends = {"config": cfg.hash(), "kadet": __version__, "models": setting_contents(cfg), **(extra or {}),
               **{k: [digest(p) if p and Path(p).exists() else "" for p in ps] for k, ps in paths.items()}}
    with finished(cfg.work_dir, stage, depends, out) as earlier:
        if earlier:
            import mlflow

            log.info("%s: the output of run %s is reused (same settings and inputs)", stage, earlier)
            mlflow.set_tag(REUSED_TAG, earlier)
            progress.event("reused", run=earlier)
        yield bool(earlier)


def prepare_step(cfg: KadetConfig, out: str, pipeline_run: str, fingerprint: dict | None = None) -> dict:
    from kadet.stages.prepare import prepare

    with tracking.stage_run(cfg, "prepare", pipeline_run, out=out):
        m = prepare(cfg, out, fingerprint if fingerprint and fingerprint.get("corpus") else None)
        tracking.log_manifest(m, out)
        import mlflow

        mlflow.set_tags({f"kadet.{k}_fingerprint": v for k, v in m.extra["fingerprint"].items()
                         if k in ("corpus", "inputs")})
    return m.counts


@contextlib.contextmanager
def resumable(cfg: KadetConfig, pipeline_run: str, name: str, out: str) -> Iterator[Path]:
    """A folder for a stage's resumable logs that outlives the task's pod:
    ``<work_dir>/resume/<pipeline run>/<name>`` (on a cluster, ``work_dir`` is the cache PVC).
    KFP retries a failed task in a new pod with the same run id, so the retry finds the log and
    goes on where the failed try stopped. When the block succeeds, the folder's files become the
    task's output (``out``) and the folder is removed."""
    keep = Path(cfg.work_dir).resolve() / "resume" / tracking.run_key(pipeline_run) / name
    keep.mkdir(parents=True, exist_ok=True)
    yield keep
    Path(out).mkdir(parents=True, exist_ok=True)
    shutil.copytree(keep, out, dirs_exist_ok=True)
    shutil.rmtree(keep, ignore_errors=True)


def generate_step(cfg: KadetConfig, passages: str, out: str, pipeline_run: str) -> dict:
    """One shard (``generate.shard_index`` of ``generate.num_shards``) of query generation;
    resumable across task retries (:func:`resumable`)."""
    from kadet.stages.generate import generate

    g = cfg.generate
    shard = f"{g.shard_index}-of-{g.num_shards}" if g.num_shards > 1 else None
    with tracking.stage_run(cfg, "generate", pipeline_run, shard=shard, out=out):
        with resumable(cfg, pipeline_run, f"generate-{g.shard_index}-of-{g.num_shards}", out) as work:
            m = generate(cfg, passages, work)
        tracking.log_manifest(m, out)
    return m.counts


def generate_merge_step(cfg: KadetConfig, passages: str, shard_dirs: Sequence[str], out: str,
                        pipeline_run: str) -> dict:
    """Join the generation shards; log usable fraction and a sample of queries."""
    from kadet.kit.data import read_records
    from kadet.stages.generate import merge_generation_shards

    with tracking.stage_run(cfg, "generate", pipeline_run, shard="merge", out=out):
        m = merge_generation_shards(cfg, passages, shard_dirs, out)
        tracking.log_manifest(m, out)
        import mlflow

        mlflow.log_metric("usable_fraction", m.extra["usable_fraction"])
        rows = read_records(file_in(out, "generate", "queries"), "qid", {"text": str, "type": str})
        sample = rows[: cfg.tracking.sample_queries]
        mlflow.log_dict({"columns": ["qid", "type", "text", "source_doc_id"],
                           "data": [[r["qid"], r["type"], r["text"], r.get("source_doc_id", "")] for r in sample]},
                          "queries_sample.json")
    return m.counts


def mine_step(cfg: KadetConfig, queries: str, corpus: str, out: str, pipeline_run: str) -> dict:
    from kadet.stages.mine import mine

    with tracking.stage_run(cfg, "mine", pipeline_run, out=out):
        with reusable(cfg, "mine", out, {"queries": queries, "corpus": corpus}) as reused:
            m = Manifest.read(out) if reused else mine(cfg, queries, corpus, out)
        tracking.log_manifest(m, out)
        tracking.note_dense_index(m.extra.get("dense_index", {}))
    return m.counts


def label_step(cfg: KadetConfig, candidates: str, corpus: str, out: str, pipeline_run: str) -> dict:
    """Score one shard (``label.shard_index`` of ``label.num_shards``) with the teacher;
    resumable across task retries (:func:`resumable`)."""
    from kadet.stages.label.stage import label

    lab = cfg.label
    name = f"{lab.shard_index}-of-{lab.num_shards}"
    with tracking.stage_run(cfg, "label", pipeline_run, shard=name, out=out):
        with reusable(cfg, f"label-{name}", out, {"candidates": candidates, "corpus": corpus}) as reused:
            if reused:   # nothing scored now: the kept shard's pairs count as reused work
                m = Manifest.read(out)
                m.counts = {**m.counts, "scored_now": 0, "pairs_scored": 0,
                            "pairs_reused": m.counts.get("pairs_reused", 0) + m.counts.get("pairs_scored", 0)}
            else:
                with resumable(cfg, pipeline_run, f"label-{name}", out) as work:
                    m = label(cfg, candidates, corpus, work, score=True, merge=False)
        tracking.log_manifest(m)
    return m.counts


def label_merge_step(cfg: KadetConfig, candidates: str, corpus: str, shard_dirs: Sequence[str], out: str,
                     pipeline_run: str) -> dict:
    """Merge the teacher's shards: filters, normalisation, split; log label statistics."""
    import mlflow

    from kadet.stages.label.stage import merge_score_shards

    with tracking.stage_run(cfg, "label", pipeline_run, shard="merge", out=out):
        with reusable(cfg, "label-merge", out, {"candidates": candidates, "corpus": corpus, "shards": shard_dirs}) as reused:
            m = Manifest.read(out) if reused else merge_score_shards(cfg, candidates, corpus, shard_dirs, out)
        tracking.log_manifest(m, out)
        mlflow.log_dict(label_statistics(Path(file_in(out, "label", "labels")), m), "label_statistics.json")
    return m.counts


def label_statistics(labels_path: Path, m: Manifest) -> dict:
    """Counts per split and type, list lengths and the score distribution of ``labels.jsonl``."""
    import numpy as np

    from kadet.kit.data import read_records

    rows = read_records(labels_path, "qid", {"type": str, "passages": list})
    scores = np.array([p["score"] for r in rows for p in r["passages"]] or [0.0])
    by = {}
    for r in rows:
        key = f"{r.get('split', '?')}/{r['type']}"
        by[key] = by.get(key, 0) + 1
    return {"queries": len(rows), "by_split_and_type": dict(sorted(by.items())), "dropped": m.dropped,
            "list_length_mean": float(np.mean([len(r["passages"]) for r in rows])) if rows else 0.0,
            "score_percentiles": {str(p): float(np.percentile(scores, p)) for p in (0, 10, 25, 50, 75, 90, 100)}}


def distill_step(cfg: KadetConfig, labels: str, out: str, pipeline_run: str, trainer_job: str = "",
                 launch=None) -> dict:
    """Train; log per-epoch losses, the curves (JSON and PNG); keep the model, drop checkpoints.

    ``trainer_job`` (JSON of :class:`kadet.kubeflow.trainjob.JobSettings`, the pipeline's ``gpu_count > 1``):
    train data-parallel as a Kubeflow Trainer job (``launch``: see :func:`kadet.kubeflow.trainjob.distill_as_job`)."""
    import mlflow

    from kadet.registry.register import find_champion
    from kadet.stages.distill import distill, init_tags

    with tracking.stage_run(cfg, "distill", pipeline_run, out=out):
        with reusable(cfg, "distill", out, {"labels": labels}, extra=start_key(cfg)) as reused:
            if reused:
                m = Manifest.read(out)
            elif trainer_job:
                from kadet.kubeflow import trainjob

                trainjob.distill_as_job(cfg, labels, out, trainjob.JobSettings.from_json(trainer_job), launch=launch)
                m = Manifest.read(out)
            else:
                m = distill(cfg, labels, out, find_champion=find_champion)
            shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)  # resume state, not a product
        tracking.log_manifest(m, out)
        mlflow.set_tags(init_tags(m.extra.get("init")))   # base or champion vN, and why a fallback
        curves = read_json(Path(out) / "curves.json")
        for e, dev, tr in zip(curves["epoch"], curves["dev_loss"], curves.get("epoch_train_loss", [])):
            mlflow.log_metrics({"dev_loss": dev, "train_loss": tr}, step=int(e))
        mlflow.log_metrics({"best_dev_loss": m.extra["best_dev_loss"], "best_epoch": m.extra["best_epoch"]})
        with tempfile.TemporaryDirectory() as tmp:
            plots.plot_curves(curves, Path(tmp) / "loss_curves.png")
            mlflow.log_artifact(str(Path(tmp) / "loss_curves.png"))
        mlflow.log_artifact(str(Path(out) / "curves.json"))
    return {**m.counts, "best_epoch": m.extra["best_epoch"]}


def start_key(cfg: KadetConfig) -> dict:
    """What distill starts from, beyond its settings: with ``distill.init: champion``, the champion
    it would start from, by its model fingerprint (another champion means other training; a
    version number alone could name another model in a reset registry)."""
    if cfg.distill.init != "champion":
        return {}
    from kadet.registry.register import FINGERPRINT_TAG, alias_version

    champ = alias_version(tracking.client(cfg), cfg.register.model_name, cfg.register.champion_alias)
    return {"champion": f"v{champ.version} {(champ.tags or {}).get(FINGERPRINT_TAG, champ.run_id)}" if champ else ""}


def evaluate_step(cfg: KadetConfig, model_dir: str, labels: str | None, out: str, pipeline_run: str) -> dict:
    """Base model and candidate on the same test data; nDCG by query type as table and PNG.
    Returns ``comparison.json``'s object (:meth:`kadet.kit.comparison.Comparison.to_json`)."""
    import mlflow

    from kadet.kit.comparison import Comparison, metric_name
    from kadet.stages.evaluate import compare

    with tracking.stage_run(cfg, "evaluate", pipeline_run, out=out):
        with reusable(cfg, "evaluate", out, {"model": model_dir, "labels": labels, "data": cfg.data.data_dir,
                                             "qrels": cfg.data.qrels}) as reused:
            comp = (Comparison.from_json(json.loads(Path(file_in(out, "evaluate", "comparison")).read_text()))
                    if reused else compare(cfg, model_dir, out, labels_path=labels))
        for who, figures in (("base", comp.base), ("candidate", comp.candidate)):   # what the gate judges
            mlflow.log_metrics({metric_name(f"{who}_{k}"): v for k, v in figures.items()})
        for r, figures in comp.retrievers.items():   # every retriever: dense_*, hybrid_*, bm25_*
            flat = {f"{r}_{k}": v for k, v in figures.items()} if r == "bm25" else {
                f"{r}_{who}_{k}": v for who in ("base", "candidate") for k, v in figures[who].items()}
            mlflow.log_metrics({metric_name(k): v for k, v in flat.items()})
        nd = cfg.evaluation.ndcg
        mlflow.log_metric(metric_name(f"delta_{nd}"), comp.candidate[nd] - comp.base[nd])
        mlflow.set_tags({tracking.EVAL_DATA_TAG: comp.eval_data, tracking.EVAL_KIND_TAG: comp.kind,
                         tracking.GATE_RETRIEVER_TAG: comp.retriever})
        tracking.log_manifest(Manifest.read(out), out)
        mlflow.log_artifact(file_in(out, "evaluate", "comparison"))
        if comp.by_type:
            log_by_type(comp.by_type, nd)
    return comp.to_json()


def log_by_type(by_type: dict, ndcg: str) -> None:
    """nDCG per query type on the active run: ``ndcg_by_query_type.json`` (a table) and ``.png``."""
    import mlflow

    table = {"columns": ["type", "queries", f"base_{ndcg}", f"candidate_{ndcg}"],
             "data": [[t, r["queries"], round(r["base"], 4), round(r["candidate"], 4)] for t, r in by_type.items()]}
    mlflow.log_dict(table, "ndcg_by_query_type.json")
    with tempfile.TemporaryDirectory() as tmp:
        plots.plot_by_type(plots.by_type_bars(by_type), Path(tmp) / "ndcg_by_query_type.png", ndcg)
        mlflow.log_artifact(str(Path(tmp) / "ndcg_by_query_type.png"))


def register_step(cfg: KadetConfig, model_dir: str, comparison_dir: str, pipeline_run: str,
                  report_path: str | None = None, prepared_dir: str | None = None,
                  summary_path: str | None = None) -> dict:
    """Log and register the candidate, decide the gate (aliases are set by the next step); write
    the run's ``report.html`` to ``report_path`` (the KFP run page shows it) and log it to MLflow,
    on this step's run and on the pipeline's parent run; the decision as Markdown to
    ``summary_path``. Returns the gate's figures too (``figures``: :func:`gate_figures`)."""
    import mlflow

    from kadet.kit.comparison import Comparison
    from kadet.registry.register import gate_text, register_candidate
    from kadet.reporting import summary
    from kadet.reporting.report import write_report_or_reason

    pipeline_run = tracking.run_key(pipeline_run)
    comparison = Comparison.from_json(read_json(file_in(comparison_dir, "evaluate", "comparison")))
    # a silver run's held-out set (in evaluate's output) is where a champion is evaluated again
    silver = str(Path(comparison_dir) / comparison.silver_dir) if comparison.silver_dir else None
    with tracking.stage_run(cfg, "register", pipeline_run):
        r = register_candidate(cfg, model_dir, comparison, pipeline_run, prepared_dir=prepared_dir, eval_dir=silver)
        gate = {"lineage": r.lineage, "promote": r.decision.promote, "reason": gate_text(r.decision, comparison.kind),
                "version": r.version, "model_name": r.name, "incumbent": r.decision.incumbent,
                "incumbent_metrics": r.incumbent_metrics, "links": tracking.links(cfg, pipeline_run, r.name, r.version),
                "tracking_uri": mask_uri(tracking.tracking_uri(cfg))}
        with tempfile.TemporaryDirectory() as tmp:
            report = write_report_or_reason(cfg, pipeline_run, comparison, gate,
                                            report_path or Path(tmp) / "report.html")
            if report.name != "report.html":          # KFP names an output file after the output
                report = Path(shutil.copy(report, Path(tmp) / "report.html"))
            mlflow.log_artifact(str(report))
            tracking.client(cfg).log_artifact(tracking.parent_run_id(cfg, pipeline_run), str(report))
    metrics = (cfg.evaluation.ndcg, cfg.evaluation.recall)
    write_summary(summary_path, lambda: summary.gate_decision(comparison, gate, metrics, gate["links"]))
    return {"version": r.version, "promote": r.decision.promote, "reason": r.decision.reason,
            "incumbent": r.decision.incumbent, "candidate": r.candidate, "incumbent_metrics": r.incumbent_metrics,
            "figures": gate_figures(comparison, r.candidate, r.incumbent_metrics, r.decision.promote, metrics)}


def gate_figures(comparison, candidate: dict, incumbent: dict | None, promote: bool,
                 metrics: tuple[str, str]) -> dict[str, float]:
    """What the gate decided on, as the KFP ``Metrics`` the run page shows: candidate and
    incumbent in both gate metrics, their delta, the gain's interval over the base, the decision."""
    from kadet.kit.comparison import metric_name

    out = {"promote": float(promote)}
    for m in metrics:
        out[metric_name(f"candidate_{m}")] = float(candidate.get(m, float("nan")))
        if incumbent:
            out[metric_name(f"incumbent_{m}")] = float(incumbent.get(m, float("nan")))
            out[metric_name(f"delta_{m}")] = out[metric_name(f"candidate_{m}")] - out[metric_name(f"incumbent_{m}")]
    gain = comparison.gain(metrics[0])
    if gain:
        out |= {metric_name(f"gain_{metrics[0]}"): float(gain["mean"]), "gain_ci_low": float(gain["ci_low"]),
                "gain_ci_high": float(gain["ci_high"])}
        if "confidence" in gain:
            out["gain_confidence"] = float(gain["confidence"])
    return {k: v for k, v in out.items() if math.isfinite(v)}   # KFP's metadata is JSON: no NaN


def promote_step(cfg: KadetConfig, version: str, pipeline_run: str, gate_summary: str | None = None,
                 summary_path: str | None = None) -> None:
    """Promote (a compare-and-set: the champion may have moved since the register step). A
    refusal at this point is recorded (the version is the challenger, the reason is the pipeline's
    parent run's ``kadet.gate``), written in the summary, and then fails the task with the reason,
    so the KFP run shows it (red, not a green "promote" that promoted nothing). With
    ``summary_path``: the register step's Markdown (``gate_summary``, a file) and the outcome."""
    from kadet.core.errors import KadetError
    from kadet.registry.promotion import promote
    from kadet.reporting import summary

    d = promote(cfg, version)
    if not d.promote:
        tracking.client(cfg).set_tag(tracking.parent_run_id(cfg, pipeline_run), tracking.GATE_TAG, d.reason)
    write_summary(summary_path, lambda: summary.outcome(read_text(gate_summary), d.promote, version,
                                                        "" if d.promote else d.reason))
    if not d.promote:
        raise KadetError(f"promotion of v{version} refused at the last moment (the champion moved after the "
                         f"register step decided): {d.reason}; v{version} is the challenger")


def challenger_step(cfg: KadetConfig, version: str, reason: str, pipeline_run: str, gate_summary: str | None = None,
                    summary_path: str | None = None) -> None:
    """Alias ``challenger`` on the version the gate refused; with ``summary_path``, the register
    step's Markdown (``gate_summary``) and the outcome."""
    from kadet.registry.promotion import mark_challenger
    from kadet.reporting import summary

    mark_challenger(cfg, version, reason)
    write_summary(summary_path, lambda: summary.outcome(read_text(gate_summary), False, version))


def read_text(path: str | None) -> str:
    """A file's text ("" without a path or file: the outcome line alone)."""
    return io.read_text(path) if path and Path(path).is_file() else ""


def finish_step(cfg: KadetConfig, pipeline_run: str, state: str, error: str | None = None) -> None:
    """The pipeline's exit handler: close the parent run FINISHED if the pipeline succeeded,
    else FAILED with the error as a tag (it runs whatever happened to the other tasks)."""
    status = "FINISHED" if state == "SUCCEEDED" else "FAILED"
    tracking.close_stale_runs(cfg)   # a task killed on the way (OOM, kill -9) left its stage run RUNNING
    if error:
        tracking.client(cfg).set_tag(tracking.parent_run_id(cfg, pipeline_run), tracking.ERROR_TAG, str(error)[:5000])
    tracking.finish_parent(cfg, pipeline_run, status)


def model_folder(distill_out: str | Path) -> Path:
    """The sentence-transformers folder inside a distill step's output."""
    return Path(distill_out) / "model"
