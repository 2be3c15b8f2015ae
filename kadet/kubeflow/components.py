"""The KFP lightweight components: one thin call into ``kadet.kubeflow.steps`` each, and
:func:`build`, which makes them on an image.

    comps = build(base_image="registry.example.com/kadet:0.1.0-cpu")
    comps.prepare(data_uri=..., ...)

KFP serialises each function's source into the component, so every import is inside the body
and the image (``base_image``, see :func:`build`) must have kadet installed. Inputs
and outputs are KFP artifacts (folders). The first task, :func:`config`, takes the run parameters
(kadet/kubeflow/parameters.py: the one table) and resolves the run's one config; every other
component takes that resolved config (``config``, YAML text, read back frozen) and its artifacts.

The image is a setting: ``build(image)``, else ``$KADET_IMAGE``, else :data:`DEFAULT_IMAGE`;
the GPU steps of a cluster pipeline use ``$KADET_GPU_IMAGE``, else :data:`DEFAULT_GPU_IMAGE`.
Images have kadet and kfp installed, so components install nothing at start-up.
"""

import os
import sys
from types import SimpleNamespace
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output, PipelineTaskFinalStatus

DEFAULT_IMAGE = "ghcr.io/kadet-ml/kadet:0.1.0-cpu"
DEFAULT_GPU_IMAGE = "ghcr.io/kadet-ml/kadet:0.1.0-cuda"
NAMES = ("config", "fingerprint", "unchanged", "preflight", "nothing_to_learn", "prepare", "generate", "generate_merge", "mine", "label", "label_merge",
         "distill", "evaluate", "register", "promote", "challenger", "finish", "shard_indices")


def image() -> str:
    return os.environ.get("KADET_IMAGE", DEFAULT_IMAGE)


def gpu_image() -> str:
    return os.environ.get("KADET_GPU_IMAGE", DEFAULT_GPU_IMAGE)


def build(base_image: str | None = None) -> SimpleNamespace:
    """Every component, built on ``base_image``."""
    img = base_image or image()
    return SimpleNamespace(**{
        name: dsl.component(getattr(sys.modules[__name__], name), base_image=img, install_kfp_package=False)
        for name in NAMES
    })


def config(data_uri: str, eval_qrels_uri: str, profile: str, config_yaml: str, sample_size: int, query_types: dict,
           teacher: str, label_list_size: int, train_list_size: int, training_mode: str, ndcg_floor: float,
           min_delta: float, max_recall_drop: float, model_name: str, work_dir: str) -> str:
    from kadet.kubeflow.steps import config_step

    return config_step(locals())


def fingerprint(config: str, pipeline_run: str) -> NamedTuple("Fingerprint", [("corpus", str), ("inputs", str),
                                                                               ("unchanged_since", str)]):
    from collections import namedtuple

    from kadet.kubeflow.steps import fingerprint_step, step_config

    fp = fingerprint_step(step_config(config), pipeline_run)
    return namedtuple("Fingerprint", ["corpus", "inputs", "unchanged_since"])(
        fp["corpus"], fp["inputs"], fp["unchanged_since"])


def unchanged(version: str, config: str, pipeline_run: str, summary: Output[Markdown]):
    from kadet.kubeflow.steps import step_config, unchanged_step

    unchanged_step(step_config(config), version, pipeline_run, summary_path=summary.path)


def preflight(corpus_fingerprint: str, config: str, pipeline_run: str, report: Output[Dataset],
              figures: Output[Metrics]) -> NamedTuple("Preflight", [("go", str), ("reason", str)]):
    from collections import namedtuple

    from kadet.kubeflow.steps import preflight_figures, preflight_step, step_config

    reason = preflight_step(step_config(config), report.path, pipeline_run)
    for name, value in preflight_figures(report.path).items():
        figures.log_metric(name, round(value, 4))
    return namedtuple("Preflight", ["go", "reason"])("no" if reason else "yes", reason)


def nothing_to_learn(reason: str, preflight: Input[Dataset], config: str, pipeline_run: str,
                     summary: Output[Markdown]):
    from kadet.kubeflow.steps import nothing_to_learn_step, step_config

    nothing_to_learn_step(step_config(config), reason, pipeline_run, preflight_dir=preflight.path,
                          summary_path=summary.path)


def prepare(corpus_fingerprint: str, inputs_fingerprint: str, config: str, pipeline_run: str,
            prepared: Output[Dataset]):
    from kadet.kubeflow.steps import prepare_step, step_config

    prepare_step(step_config(config), prepared.path, pipeline_run,
                 {"corpus": corpus_fingerprint, "inputs": inputs_fingerprint})


def generate(prepared: Input[Dataset], shard_index: int, num_shards: int, config: str, pipeline_run: str,
             shard: Output[Dataset]):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import generate_step, step_config

    cfg = step_config(config, {"generate.shard_index": int(shard_index), "generate.num_shards": int(num_shards)})
    generate_step(cfg, file_in(prepared.path, "prepare", "passages"), shard.path, pipeline_run)


def generate_merge(prepared: Input[Dataset], shards: Input[List[Dataset]], num_shards: int, config: str,
                   pipeline_run: str, queries: Output[Dataset]):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import generate_merge_step, step_config

    cfg = step_config(config, {"generate.num_shards": int(num_shards)})
    generate_merge_step(cfg, file_in(prepared.path, "prepare", "passages"), [s.path for s in shards], queries.path,
                        pipeline_run)


def mine(prepared: Input[Dataset], queries: Input[Dataset], config: str, pipeline_run: str,
         candidates: Output[Dataset]):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import mine_step, step_config

    mine_step(step_config(config), file_in(queries.path, "generate", "queries"),
              file_in(prepared.path, "prepare", "corpus"), candidates.path, pipeline_run)


def label(prepared: Input[Dataset], candidates: Input[Dataset], shard_index: int, num_shards: int, config: str,
          pipeline_run: str, scores: Output[Dataset]):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import label_step, step_config

    cfg = step_config(config, {"label.shard_index": int(shard_index), "label.num_shards": int(num_shards)})
    label_step(cfg, file_in(candidates.path, "mine", "candidates"), file_in(prepared.path, "prepare", "corpus"),
               scores.path, pipeline_run)


def label_merge(prepared: Input[Dataset], candidates: Input[Dataset], shards: Input[List[Dataset]], num_shards: int,
                config: str, pipeline_run: str, labels: Output[Dataset]):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import label_merge_step, step_config

    cfg = step_config(config, {"label.num_shards": int(num_shards)})
    label_merge_step(cfg, file_in(candidates.path, "mine", "candidates"), file_in(prepared.path, "prepare", "corpus"),
                     [s.path for s in shards], labels.path, pipeline_run)


def distill(labels: Input[Dataset], config: str, pipeline_run: str, model: Output[Model], trainer_job: str = ""):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import distill_step, step_config

    cfg = step_config(config)
    distill_step(cfg, file_in(labels.path, "label", "labels"), model.path, pipeline_run, trainer_job=trainer_job)
    model.metadata["mode"] = cfg.distill.mode
    model.metadata["framework"] = "sentence-transformers"


def evaluate(model: Input[Model], labels: Input[Dataset], config: str, pipeline_run: str, metrics: Output[Metrics],
             report: Output[Dataset]):
    from kadet.core.layout import file_in
    from kadet.kubeflow.steps import evaluate_step, model_folder, step_config
    from kadet.registry.tracking import metric_name

    rep = evaluate_step(step_config(config), str(model_folder(model.path)), file_in(labels.path, "label", "labels"),
                        report.path, pipeline_run)
    for who in ("base", "candidate"):
        for name, value in rep[who].items():
            metrics.log_metric(metric_name(f"{who}_{name}"), round(value, 4))


def register(model: Input[Model], report: Input[Dataset], prepared: Input[Dataset], config: str, pipeline_run: str,
             run_report: Output[HTML], figures: Output[Metrics], summary: Output[Markdown]) -> NamedTuple(
        "Gate", [("decision", str), ("version", str), ("reason", str)]):
    from collections import namedtuple

    from kadet.kubeflow.steps import model_folder, register_step, step_config

    r = register_step(step_config(config), str(model_folder(model.path)), report.path, pipeline_run,
                      run_report.path, prepared_dir=prepared.path, summary_path=summary.path)
    for name, value in r["figures"].items():
        figures.log_metric(name, round(value, 4))
    gate = namedtuple("Gate", ["decision", "version", "reason"])
    return gate("promote" if r["promote"] else "reject", r["version"], r["reason"])


def promote(version: str, gate: Input[Markdown], config: str, pipeline_run: str, summary: Output[Markdown]):
    from kadet.kubeflow.steps import promote_step, step_config

    promote_step(step_config(config), version, pipeline_run, gate_summary=gate.path, summary_path=summary.path)


def challenger(version: str, reason: str, gate: Input[Markdown], config: str, pipeline_run: str,
               summary: Output[Markdown]):
    from kadet.kubeflow.steps import challenger_step, step_config

    challenger_step(step_config(config), version, reason, pipeline_run, gate_summary=gate.path,
                    summary_path=summary.path)


def finish(profile: str, config_yaml: str, work_dir: str, pipeline_run: str, status: PipelineTaskFinalStatus):
    # KFP forbids an exit task any other task's output, so it cannot take the resolved config:
    # it resolves what it needs (where MLflow is) from the same parameters (no run parameter sets it)
    from kadet.kubeflow.steps import config_step, finish_step, step_config

    cfg = step_config(config_step({"profile": profile, "config_yaml": config_yaml, "work_dir": work_dir}))
    finish_step(cfg, pipeline_run, status.state, status.error_message)


def shard_indices(num_shards: int) -> List[int]:
    return list(range(int(num_shards)))
