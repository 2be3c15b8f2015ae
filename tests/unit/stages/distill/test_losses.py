"""Distillation losses against direct NumPy references on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kadet.stages.distill.losses import cosine_scores, distill_loss, false_negative_mask, info_nce, listwise_kl


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _np_cos(q, p):
    qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
    pn = p / np.linalg.norm(p, axis=-1, keepdims=True)
    return np.einsum("bd,bld->bl", qn, pn)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 8))
    p = rng.normal(size=(4, 5, 8))
    t = np.sort(rng.uniform(size=(4, 5)), axis=1)[:, ::-1].copy()
    return q, p, t


def test_listwise_kl_matches_numpy(batch):
    q, p, t = batch
    s = _np_cos(q, p)
    ps, pt = _np_softmax(s / 0.05), _np_softmax(t / 0.3)
    want = (pt * (np.log(pt) - np.log(ps))).sum(-1).mean()
    got = listwise_kl(cosine_scores(torch.tensor(q), torch.tensor(p)), torch.tensor(t))
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert listwise_kl(torch.tensor(t), torch.tensor(t), 0.3, 0.3).item() == pytest.approx(0, abs=1e-12)


def _np_info_nce(q, p, t, ids=None, temp=0.01, thr=0.6):
    b, l, d = p.shape
    flat = p.reshape(b * l, d)
    logits = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (flat / np.linalg.norm(flat, axis=1, keepdims=True)).T / temp
    total = 0.0
    for i in range(b):
        keep = []
        for j in range(b * l):
            owner, k = divmod(j, l)
            masked = owner == i and k > 0 and t[i, k] > thr * t[i, 0]
            if ids is not None and not (owner == i and k == 0):
                own_fn = [ids[i, kk] for kk in range(l) if t[i, kk] > thr * t[i, 0]]
                masked = masked or ids.reshape(-1)[j] in own_fn
            if not masked:
                keep.append(j)
        row = logits[i, keep]
        pos = keep.index(i * l)
        m = row.max()
        total += -(row[pos] - m - np.log(np.exp(row - m).sum()))
    return total / b


def test_info_nce_matches_numpy(batch):
    q, p, t = batch
    got = info_nce(torch.tensor(q), torch.tensor(p), torch.tensor(t))
    assert got.item() == pytest.approx(_np_info_nce(q, p, t), rel=1e-9)
    ids = np.arange(20).reshape(4, 5)
    ids[2, 3] = ids[0, 0]  # query 0's positive also appears in query 2's list
    ids[3, 1] = ids[1, 1]
    got = info_nce(torch.tensor(q), torch.tensor(p), torch.tensor(t), torch.tensor(ids))
    assert got.item() == pytest.approx(_np_info_nce(q, p, t, ids), rel=1e-9)


def test_false_negative_mask_on_constructed_batch():
    teacher = torch.tensor([[1.0, 0.7, 0.5, 0.1],    # 0.7 > 0.6 -> masked; 0.5 is a true negative
                            [0.5, 0.31, 0.29, 0.0]])  # 0.31 > 0.30 -> masked
    ids = torch.tensor([[10, 11, 12, 13],
                        [20, 21, 11, 10]])           # query 1's list holds 11 and 10 too
    m = false_negative_mask(teacher, ids)
    want0 = [False, True, False, False, False, False, False, True]   # own 11, and q1's copy of 10 (q0's positive)
    assert m[0].tolist()[:4] == want0[:4]
    assert m[0, 7].item() is True   # q1's copy of doc 10 = q0's positive
    assert m[0, 6].item() is True   # q1's copy of doc 11 = q0's likely false negative
    assert m[0, 4].item() is False and m[0, 5].item() is False  # q1's own passages stay negatives for q0
    assert m[1].tolist() == [False, False, False, False, False, True, False, False]
    assert m[0, 0].item() is False and m[1, 4].item() is False  # positives never masked


def test_distill_loss_mix_and_dtype(batch):
    q, p, t = batch
    qt, pt, tt = torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32), torch.tensor(t)
    total = distill_loss(qt, pt, tt)
    kl = listwise_kl(cosine_scores(qt, pt), tt)
    nce = info_nce(qt, pt, tt)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx((kl + 0.1 * nce).item(), rel=1e-6)
    assert distill_loss(qt, pt, tt, kl_weight=0, nce_weight=1).item() == pytest.approx(nce.item(), rel=1e-6)


def test_low_temperature_does_not_underflow():
    q = torch.randn(2, 4, dtype=torch.float32)
    p = torch.randn(2, 3, 4, dtype=torch.float32) * 100
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.2, 0.1]])
    for loss in (distill_loss(q, p, t), distill_loss(q, p, t, nce_temp=1e-4, student_temp=1e-3)):
        assert torch.isfinite(loss)
