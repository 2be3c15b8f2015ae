"""``distill.auto_teacher_temp``: the teacher temperature at which the teacher's targets are closest
(mean listwise KL) to the untrained student's own lists, so the loss asks for a better order, not
a flatter or sharper list."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

from kadet.stages.distill.losses import listwise_kl

log = logging.getLogger("kadet.distill")   # the stage's one logger: its name is in the log lines


def calibrate_teacher_temp(lists: Iterable[tuple[torch.Tensor, torch.Tensor]], student_temp: float,
                           configured: float, grid: int = 41) -> float:
    """The teacher temperature (log grid 0.01 .. 1) that minimises the mean listwise KL over
    ``lists``: ``(student cosines (B, L), teacher scores (B, L))`` per batch of the student at its
    start. ``configured`` (``distill.teacher_temp``) is only reported, for comparison."""
    kls = torch.zeros(grid, dtype=torch.float64)
    temps = torch.logspace(-2, 0, grid, dtype=torch.float64)
    n = 0
    for cos, teacher in lists:
        for i, t in enumerate(temps):
            kls[i] += float(listwise_kl(cos, teacher, student_temp, float(t))) * len(cos)
        n += len(cos)
    best = float(temps[int(torch.argmin(kls))])
    log.info("distill: teacher temperature %.3g (mean KL at start %.4f; at %.3g it was %.4f)", best,
             float(kls.min()) / n, configured, float(listwise_kl_at(kls, temps, configured)) / n)
    return best


def listwise_kl_at(kls: torch.Tensor, temps: torch.Tensor, temp: float) -> float:
    """The summed KL of the grid point nearest to ``temp`` (for the log line)."""
    return float(kls[int(torch.argmin((temps.log() - math.log(temp)).abs()))])
