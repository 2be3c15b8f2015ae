"""Distill's data: the label stage's lists read into training and dev queries, and batches of them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from kadet.kit.data import read_records
from kadet.core.errors import KadetError

LABEL_FIELDS = {"query": str, "passages": list, "split": str}


@dataclass
class TrainingData:
    """``labels.jsonl`` split by its ``split`` field, and every passage its lists name."""

    path: str | Path
    train_rows: list[dict]           # at most distill.max_train_queries (0: all)
    dev_rows: list[dict]
    doc_index: dict[str, int]        # doc_id -> its row in a document embedding table (sorted ids)
    doc_text: dict[str, str]

    @classmethod
    def read(cls, labels_path: str | Path, max_train_queries: int = 0) -> TrainingData:
        rows = read_records(labels_path, "qid", LABEL_FIELDS)
        train = [r for r in rows if r["split"] == "train"]
        dev = [r for r in rows if r["split"] == "dev"]
        if max_train_queries:
            train = train[:max_train_queries]
        if not train:
            raise KadetError(f"{labels_path}: no training queries (split == 'train')")
        doc_ids = sorted({p["doc_id"] for r in rows for p in r["passages"]})
        return cls(labels_path, train, dev, {d: i for i, d in enumerate(doc_ids)},
                   {p["doc_id"]: p["text"] for r in rows for p in r["passages"]})


@dataclass
class Batch:
    """Queries with their lists cut to one length, in teacher order (column 0: the teacher's top)."""

    queries: list[str]
    docs: list[list[str]]            # each query's passage ids
    teacher: torch.Tensor            # (B, L) float64 teacher scores
    ids: torch.Tensor                # (B, L) each passage's row in TrainingData.doc_index
    list_size: int                   # L

    def __len__(self) -> int:
        return len(self.queries)


def make_batch(rows: list[dict], list_size: int, doc_index: dict[str, int], device: str) -> Batch:
    """``rows``' lists cut to ``list_size`` passages (0: as labelled), and to the batch's shortest."""
    shortest = min(len(r["passages"]) for r in rows)
    lsize = min(list_size, shortest) if list_size else shortest
    docs = [[p["doc_id"] for p in r["passages"][:lsize]] for r in rows]
    teacher = torch.tensor([[p["score"] for p in r["passages"][:lsize]] for r in rows], dtype=torch.float64,
                           device=device)
    ids = torch.tensor([[doc_index[d] for d in lst] for lst in docs], device=device)
    return Batch([r["query"] for r in rows], docs, teacher, ids, lsize)


def chunked(items: list, size: int) -> list[list]:
    """``items`` in consecutive pieces of ``size`` (the last one shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training queries' order in ``epoch``: a shuffle seeded by ``seed + epoch`` (so a resumed
    run sees the order an uninterrupted one would)."""
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order
