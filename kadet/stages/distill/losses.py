"""Distillation losses: listwise KL to the teacher and InfoNCE with false-negative masking.

Inputs, for a batch of B queries with L passages each (in teacher order, so column 0 is the
teacher's top passage):

==================  ============  =====================================================
``q``               (B, d)        query embeddings
``p``               (B, L, d)     passage embeddings
``teacher``         (B, L)        teacher scores (normalised to [0, 1] by the label stage)
``doc_ids``         (B, L) int    integer id per passage, to spot the same passage in
                                  several lists (optional)
==================  ============  =====================================================

Example::

    loss = distill_loss(q, p, teacher, doc_ids)          # KL + 0.1 x InfoNCE, the paper's mix
    kl = listwise_kl(cosine_scores(q, p), teacher)       # one term alone

Scores and softmaxes are computed in float64, where the 0.01 temperature would otherwise
underflow; the result is cast back to the embeddings' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, L) cosine similarity of each query with its own passages, in float64."""
    qn = F.normalize(q.double(), dim=-1)
    pn = F.normalize(p.double(), dim=-1)
    return torch.einsum("bd,bld->bl", qn, pn)


def listwise_kl(student_cos: torch.Tensor, teacher: torch.Tensor, student_temp: float = 0.05,
                teacher_temp: float = 0.3) -> torch.Tensor:
    """KL( softmax(teacher / t_T) || softmax(student / t_S) ), averaged over queries (batchmean)."""
    log_s = torch.log_softmax(student_cos.double() / student_temp, dim=-1)
    log_t = torch.log_softmax(teacher.double() / teacher_temp, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def false_negative_mask(teacher: torch.Tensor, doc_ids: torch.Tensor | None = None,
                        threshold: float = 0.6) -> torch.Tensor:
    """(B, B*L) bool: True where passage j must NOT be a negative for query i.

    Masked: passages in i's own list whose teacher score is above ``threshold`` x i's top
    score (likely false negatives), and, when ``doc_ids`` is given, any copy elsewhere in the
    batch of such a passage or of i's positive. Column ``i*L`` (i's positive) is never masked.
    """
    b, l = teacher.shape
    t = teacher.double()
    own = t > threshold * t[:, :1]                       # (B, L) likely positives in own list
    mask = torch.zeros((b, b * l), dtype=torch.bool, device=teacher.device)
    rows = torch.arange(b, device=teacher.device)
    for j in range(l):
        mask[rows, rows * l + j] = own[:, j]
    if doc_ids is not None:
        flat = doc_ids.reshape(-1)                          # (B*L,)
        same = doc_ids.unsqueeze(-1) == flat.view(1, 1, -1)  # (B, L, B*L): own passage k == batch passage j
        mask |= (same & own.unsqueeze(-1)).any(1)
    mask[rows, rows * l] = False
    return mask


def info_nce(q: torch.Tensor, p: torch.Tensor, teacher: torch.Tensor, doc_ids: torch.Tensor | None = None,
             temperature: float = 0.01, fn_threshold: float = 0.6) -> torch.Tensor:
    """InfoNCE: positive = each query's teacher-top passage; negatives = every other passage in
    the batch (other queries' positives and all hard negatives), minus the masked ones."""
    b, l, d = p.shape
    qn = F.normalize(q.double(), dim=-1)
    pn = F.normalize(p.double().reshape(b * l, d), dim=-1)
    logits = qn @ pn.T / temperature                     # (B, B*L)
    logits = logits.masked_fill(false_negative_mask(teacher, doc_ids, fn_threshold), float("-inf"))
    target = torch.arange(b, device=q.device) * l
    return F.cross_entropy(logits, target)


def distill_loss(q: torch.Tensor, p: torch.Tensor, teacher: torch.Tensor, doc_ids: torch.Tensor | None = None,
                 kl_weight: float = 1.0, nce_weight: float = 0.1, student_temp: float = 0.05,
                 teacher_temp: float = 0.3, nce_temp: float = 0.01, fn_threshold: float = 0.6) -> torch.Tensor:
    """``kl_weight x listwise_kl + nce_weight x info_nce`` (paper: 1.0 and 0.1).

    ``kl_weight=0, nce_weight=1`` is the InfoNCE-only baseline the paper contrasts with.
    """
    total = q.new_zeros((), dtype=torch.float64)
    if kl_weight:
        total = total + kl_weight * listwise_kl(cosine_scores(q, p), teacher, student_temp, teacher_temp)
    if nce_weight:
        total = total + nce_weight * info_nce(q, p, teacher, doc_ids, nce_temp, fn_threshold)
    return total.to(q.dtype)
