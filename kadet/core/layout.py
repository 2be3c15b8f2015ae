"""The stages' file layout, in one place: what each stage writes, and where its inputs come from.

Each stage writes its outputs in its own folder (``<work_dir>/<stage>/`` for the CLI, one KFP
artifact folder in the pipeline), with ``manifest.json`` beside them::

    output_path(".kadet", "mine", "candidates")      # .kadet/mine/candidates.jsonl
    input_path(".kadet", "label", "candidates")      # the same file, as label's input

Used by the CLI (default paths), the KFP components (files inside artifact folders) and the
benchmarks that wire the steps by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kadet.core.errors import ConfigError

#: Where a task finds its pipeline run's key when it is not passed in (on a cluster: the Argo
#: workflow's name, from the pod's labels, so the key is not an input and KFP's cache can hit).
#: The reuse store marks what a run used with it; tracking names the MLflow parent run by it.
RUN_KEY_ENV = "KADET_PIPELINE_RUN"
#: On a cluster, the KFP run's id (the pod's ``pipeline/runid`` label): tagged on the MLflow parent run.
KFP_RUN_ENV = "KADET_KFP_RUN_ID"


@dataclass(frozen=True)
class Stage:
    name: str
    #: output name -> file name in the stage's folder
    outputs: dict[str, str] = field(default_factory=dict)
    #: input name -> (upstream stage, its output name)
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", {"passages": "passages.jsonl", "corpus": "corpus.jsonl"}),
    Stage("generate", {"queries": "queries.jsonl", "log": "generations.jsonl"}, {"passages": ("prepare", "passages")}),
    Stage("mine", {"candidates": "candidates.jsonl"}, {"queries": ("generate", "queries"), "corpus": ("prepare", "corpus")}),
    Stage("label", {"labels": "labels.jsonl"}, {"candidates": ("mine", "candidates"), "corpus": ("prepare", "corpus")}),
    Stage("distill", {"model": "model", "curves": "curves.json"}, {"labels": ("label", "labels")}),
    Stage("evaluate", {"comparison": "comparison.json", "per_query": "per_query.json"}, {"labels": ("label", "labels")}),
)}


def file_in(folder: str | os.PathLike, stage: str, output: str) -> str:
    """The file of ``stage``'s ``output`` inside ``folder`` (a stage folder or KFP artifact path)."""
    return str(Path(folder) / STAGES[stage].outputs[output])


def output_path(work_dir: str | os.PathLike, stage: str, output: str) -> str:
    """``<work_dir>/<stage>/<file>``: where the CLI's ``stage`` writes ``output``."""
    return file_in(Path(work_dir) / stage, stage, output)


def input_path(work_dir: str | os.PathLike, stage: str, input_name: str) -> str:
    """Where the CLI's ``stage`` reads ``input_name`` by default: the upstream stage's output."""
    upstream, output = STAGES[stage].inputs[input_name]
    return output_path(work_dir, upstream, output)


def shard_range(n: int, index: int, shards: int) -> range:
    """Items ``[n*i/k, n*(i+1)/k)`` of ``n``: shard ``i`` of ``k``. Generation (passages) and
    labelling (queries) both shard this way: contiguous, sizes differing by at most one."""
    if not 0 <= index < shards:
        raise ConfigError(f"shard_index {index} outside 0..{shards - 1}")
    return range(n * index // shards, n * (index + 1) // shards)
