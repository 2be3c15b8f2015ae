"""The run's charts, as PNG files: training curves and nDCG per query type (matplotlib, Agg).

    plot_curves(json.loads(Path("curves.json").read_text()), "loss_curves.png")
    plot_by_type(by_type_bars(comparison.by_type), "ndcg_by_query_type.png", "ndcg@10")

The distill and evaluate steps log them to MLflow; ``report.html`` embeds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def by_type_bars(by_type: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """A comparison's ``by_type`` (``{type: {"queries": n, "base": .., "candidate": ..}}``) as the
    bars :func:`plot_by_type` draws: base and candidate per type."""
    return {t: {"base": r["base"], "candidate": r["candidate"]} for t, r in by_type.items()}


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only: no display on a pod)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return Path(path)


def plot_curves(curves: Mapping[str, list], path: str | Path) -> Path:
    """Training loss per step and dev loss per epoch, as a PNG."""
    fig, ax = _pyplot().subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(curves.get("step", []), curves.get("train_loss", []), lw=1)
    ax[0].set(xlabel="optimizer step", ylabel="train loss", title="training loss")
    ax[1].plot(curves.get("epoch", []), curves.get("dev_loss", []), marker="o", label="dev")
    if curves.get("epoch_train_loss"):
        ax[1].plot(curves["epoch"], curves["epoch_train_loss"], marker=".", label="train")
    ax[1].set(xlabel="epoch", ylabel="loss", title="loss per epoch")
    ax[1].legend()
    return _save(fig, path)


def plot_by_type(table: Mapping[str, Mapping[str, float]], path: str | Path, metric: str) -> Path:
    """Grouped bars: ``table[type][system]`` (e.g. base vs candidate nDCG@10 per query type)."""
    import numpy as np

    types = list(table)
    systems = sorted({s for row in table.values() for s in row})
    x = np.arange(len(types))
    width = 0.8 / max(1, len(systems))
    fig, ax = _pyplot().subplots(figsize=(max(5, 1.4 * len(types)), 3.5))
    for i, s in enumerate(systems):
        ax.bar(x + i * width, [table[t].get(s, 0.0) for t in types], width, label=s)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, types)
    ax.set(ylabel=metric, title=f"{metric} by query type (synthetic dev queries)")
    ax.legend()
    return _save(fig, path)
