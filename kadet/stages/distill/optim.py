"""Distill's optimizer and schedule: AdamW, linear warmup for ``distill.warmup_epochs`` (at least
``distill.min_warmup_steps`` steps), then linear decay to ``distill.final_lr_ratio`` x the peak at
the last step."""

from __future__ import annotations

import torch

from kadet.core.config import DistillConfig


def lr_factor(step: int, warmup: int, total: int, final: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay to ``final`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 1.0 - (1.0 - final) * min(1.0, (step - warmup) / span)


def make_optimizer(params: list[torch.nn.Parameter], settings: DistillConfig, steps_per_epoch: int
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` and its schedule (:func:`lr_factor`), stepped once per optimizer step."""
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, round(settings.warmup_epochs * steps_per_epoch), settings.min_warmup_steps)
    total = steps_per_epoch * settings.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, settings.final_lr_ratio))
    return opt, sched
