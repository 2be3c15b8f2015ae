"""Data-parallel distillation for real: ``torchrun --nproc_per_node 2`` (gloo, CPU) against one
process on the same labels, through the ``kadet distill`` command both times: the same loss curve
and the same final weights up to float noise (the ranks encode other chunk compositions, so the
sums differ in the last bits, nothing more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kadet.stages.distill.parallel import Ranks, shard
from tests.unit.stages.test_distill import _labels, _weights

BIN = Path(sys.executable).parent


def test_shards_cover_the_batch_in_order():
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            parts = [shard(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_one_process_is_the_identity():
    r = Ranks()
    x = torch.randn(3, 4)
    full, start = r.gather(x)
    assert full is x and start == 0 and r.share([1, 2, 3]) == [1, 2, 3] and r.main and not r.parallel


def _distill(tiny_st, tmp_path, name, labels, nproc, *sets):
    out = tmp_path / name
    base = [str(BIN / "kadet"), "distill", "--labels", str(labels), "--output", str(out),
            "--work-dir", str(tmp_path / f"work-{name}"), "--set", f"retrieval.model={tiny_st}",
            *[a for s in ("distill.chunk_size=5", "distill.epochs=3", "distill.patience=5", "distill.lr=1e-3",
                          "distill.progress=false", "distill.passage_max_len=32", "distill.query_max_len=16",
                          "distill.device=cpu", *sets) for a in ("--set", s)]]
    cmd = base if nproc == 1 else [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
                                   "--no-python", *base]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.parametrize("mode,batch", [("full", 19), ("query", 7)])
def test_two_gloo_processes_train_like_one(tiny_st, tmp_path, mode, batch):
    # 20 training queries: batches of 19 + 1 (full: the last batch leaves rank 1 nothing),
    # 7 + 7 + 6 (query side: uneven shards of 4 + 3)
    labels = _labels(tmp_path / "labels.jsonl")
    sets = (f"distill.mode={mode}", f"distill.batch_size={batch}")
    one, _ = _distill(tiny_st, tmp_path, "one", labels, 1, *sets)
    two, proc = _distill(tiny_st, tmp_path, "two", labels, 2, *sets)
    assert "rank 1 of 2 (gloo)" in proc.stderr and "(2 processes)" in proc.stdout

    c1, c2 = (json.loads((d / "curves.json").read_text()) for d in (one, two))
    assert len(c1["train_loss"]) == len(c2["train_loss"]) == 3 * -(-20 // batch)
    assert c2["train_loss"] == pytest.approx(c1["train_loss"], rel=1e-4, abs=1e-6)
    assert c2["dev_loss"] == pytest.approx(c1["dev_loss"], rel=1e-4, abs=1e-6)
    assert c1["train_loss"][-1] < c1["train_loss"][0]  # it trained, so equal weights mean something

    w1, w2 = _weights(one / "model"), _weights(two / "model")
    base = _weights(tiny_st)
    assert w1.keys() == w2.keys()
    # how far training moved the (query-side) weights from the base: a full model's keys are the
    # base's, a query-side Router's end with them
    moved = max(float((w1[k] - base[b]).abs().max()) for k in w1 for b in base
                if (k == b or k.endswith("." + b)) and w1[k].is_floating_point())
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if w1[k].is_floating_point())
    assert moved > 1e-3 and worst < 1e-5, (moved, worst)
    m = json.loads((two / "manifest.json").read_text())
    assert m["extra"]["processes"] == 2 and m["counts"]["train_queries"] == 20
