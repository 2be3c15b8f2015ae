"""The pipeline's run parameters, in one table: what the Kubeflow UI shows and what each sets.

:data:`PARAMETERS` is the only place a parameter is spelled: the pipeline's signature and its
descriptions (:func:`signature`, :func:`docstring`), the first task's mapping onto settings
(:func:`settings`) and ``kadet submit``'s check of the names it is given (:func:`check_names`)
are made from it. Each parameter has one meaning: it sets at most one setting, by path.

A parameter that sets a setting defaults to "not set" (-1, "" or {}): the profile and
``config_yaml`` then decide that setting (``work_dir``'s default is a path: it is always set).
``profile`` and ``config_yaml`` are where the settings start from; the shard counts shape the DAG.

    settings({"ndcg_floor": 0.5, "teacher": ""})   # {"register.ndcg_floor": 0.5}
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from kadet.core.errors import ConfigError

#: A parameter left at its default: the profile and ``config_yaml`` decide that setting.
NOT_SET = -1


@dataclass(frozen=True)
class Parameter:
    name: str
    type: type
    #: The UI's default; for a parameter that sets a setting, its "not set" value.
    default: Any
    help: str
    #: The setting it sets (dotted path); "" for a run option.
    setting: str = ""
    #: Required: the UI asks for it (no default).
    required: bool = False


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("data_uri", str, None, "The corpus (BEIR folder or corpus file, s3:// or a path); with judged "
              "queries: gold evaluation, else silver.", "data.data_dir", required=True),
    Parameter("eval_qrels_uri", str, "", "A qrels file to evaluate on instead of the folder's (optional).",
              "data.qrels"),
    Parameter("profile", str, "gpu", "Settings profile under config_yaml: gpu (METHOD.md's scale), local (CPU) "
              "or \"\" (defaults)."),
    Parameter("config_yaml", str, "", "Any kadet YAML; its keys override the profile's."),
    Parameter("sample_size", int, NOT_SET, "Passages that get synthetic queries (-1: the profile's).",
              "prepare.sample_size"),
    Parameter("query_types", dict, {}, "Query types and queries per passage, e.g. {\"question\": 1} (empty: the "
              "profile's).", "generate.types"),
    Parameter("generate_shards", int, 2, "Parallel generation tasks."),
    Parameter("teacher", str, "", "The teacher reranker: ensemble, cross-encoder:PATH, monot5:PATH, ... (empty: "
              "the profile's).", "label.teacher"),
    Parameter("label_list_size", int, NOT_SET, "Passages the teacher keeps per query, in its order (-1: the "
              "profile's).", "label.list_size"),
    Parameter("train_list_size", int, NOT_SET, "Passages per query used in training, from the top of each "
              "labelled list; 0 = the whole list (-1: the profile's).", "distill.list_size"),
    Parameter("label_shards", int, 2, "Parallel teacher-scoring tasks."),
    Parameter("training_mode", str, "", "query (query tower only; the document index stays valid) or full "
              "(empty: the profile's).", "distill.mode"),
    Parameter("ndcg_floor", float, NOT_SET, "The gate: the candidate's nDCG@10 must reach this (-1: the "
              "profile's).", "register.ndcg_floor"),
    Parameter("min_delta", float, NOT_SET, "The gate: nDCG@10 gain over the champion it needs (-1: the "
              "profile's).", "register.min_delta"),
    Parameter("max_recall_drop", float, NOT_SET, "The gate: Recall@100 it may lose against the champion (-1: "
              "the profile's).", "register.max_recall_drop"),
    Parameter("model_name", str, "", "MLflow registered model name (empty: the profile's).",
              "register.model_name"),
    Parameter("work_dir", str, "/var/cache/kadet", "Cache and resumable work, shared by the tasks (on a "
              "cluster: the cache PVC's mount).", "work_dir"),
)
BY_NAME = {p.name: p for p in PARAMETERS}
#: What the first task (``config``) takes to resolve the run's config: every parameter but the
#: shard counts, which shape the DAG (how many tasks), not a setting.
CONFIG_INPUTS = tuple(p.name for p in PARAMETERS if p.setting or p.name in ("profile", "config_yaml"))

#: Parameters of earlier pipeline versions: old name -> what to pass instead.
RENAMED = {"list_size": "label_list_size (passages the teacher keeps per query) and train_list_size "
                        "(passages per query used in training); list_size set both"}


def is_set(value: Any) -> bool:
    """False for a parameter's "not set" default: None, "", {}, [] or -1."""
    if value is None or (isinstance(value, (str, dict, list)) and not value):
        return False
    return not (isinstance(value, (int, float)) and not isinstance(value, bool) and value == NOT_SET)


def settings(values: dict[str, Any]) -> dict[str, Any]:
    """``{setting path: value}`` of the parameters in ``values`` that set one and are set."""
    return {BY_NAME[name].setting: value for name, value in values.items()
            if name in BY_NAME and BY_NAME[name].setting and is_set(value)}


def check_names(names: Any) -> None:
    """Refuse a parameter the pipeline does not have, naming what replaced it or what exists."""
    for name in names:
        if name in RENAMED:
            raise ConfigError(f"pipeline parameter {name!r} is gone: pass {RENAMED[name]}")
        if name not in BY_NAME:
            raise ConfigError(f"unknown pipeline parameter {name!r} (known: {', '.join(BY_NAME)})")


def signature() -> inspect.Signature:
    """The pipeline function's signature: required parameters first, each with its type and default."""
    ordered = [p for p in PARAMETERS if p.required] + [p for p in PARAMETERS if not p.required]
    return inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=p.type,
                          default=inspect.Parameter.empty if p.required else p.default)
        for p in ordered])


def docstring(summary: str) -> str:
    """``summary`` and an ``Args:`` section with each parameter's help (the UI shows them)."""
    args = "\n".join(f"    {p.name}: {p.help}" for p in PARAMETERS)
    return f"{summary}\n\nArgs:\n{args}\n"
