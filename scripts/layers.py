"""Draw kadet's layers from the code's own imports: one box per layer (its modules and lines),
lowest at the bottom, and an arrow for each pair of layers one imports from the other, labelled
with the number of imports. An import that goes up is drawn red (tests/unit's layer test fails on it).

    .venv/bin/python scripts/layers.py                      # the table, in words
    .venv/bin/python scripts/layers.py --png docs/layers.png  # and the picture

Run it on any checkout (``--repo DIR``); it reads the code as text and runs none of it.
"""

from __future__ import annotations

import argparse
import ast
import collections
from pathlib import Path

LAYERS = ("core", "kit", "llm", "stages", "registry", "reporting", "tools", "kubeflow", "cli")


def read(repo: Path) -> tuple[dict, collections.Counter]:
    """``({layer: [(module, lines)]}, Counter({(from layer, to layer): imports}))``."""
    mods, edges = collections.defaultdict(list), collections.Counter()
    for path in sorted((repo / "kadet").rglob("*.py")):
        parts = path.relative_to(repo).with_suffix("").parts
        layer = parts[1] if len(parts) > 2 and parts[1] in LAYERS else "(none)"
        text = path.read_text(encoding="utf-8")
        mods[layer].append((".".join(parts[1:]), len(text.splitlines())))
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                target = name.split(".")
                if target[0] == "kadet" and len(target) > 1 and target[1] in LAYERS and target[1] != layer:
                    edges[(layer, target[1])] += 1
    return mods, edges


def table(mods: dict, edges: collections.Counter) -> str:
    rows = []
    for layer in reversed([*LAYERS, "(none)"]):
        if layer in mods:
            lines = sum(n for _, n in mods[layer])
            uses = ", ".join(f"{t} {n}" for (f, t), n in sorted(edges.items()) if f == layer)
            rows.append(f"{layer:10} {len(mods[layer]):3} modules {lines:6} lines   imports: {uses or '-'}")
    up = [f"{f} -> {t}" for (f, t) in edges if f in LAYERS and LAYERS.index(t) > LAYERS.index(f)]
    return "\n".join(rows + [f"imports that go up: {', '.join(up) or 'none'}"])


def draw(mods: dict, edges: collections.Counter, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [layer for layer in LAYERS if layer in mods]
    fig, ax = plt.subplots(figsize=(9, 1.1 * len(present) + 1))
    y = {layer: i * 1.1 for i, layer in enumerate(present)}
    for layer in present:
        lines = sum(n for _, n in mods[layer])
        names = ", ".join(m.split(".", 1)[-1] for m, _ in mods[layer] if not m.endswith("__init__"))
        ax.add_patch(plt.Rectangle((0, y[layer]), 6, 0.8, fc="#e8eef7", ec="#35557f"))
        ax.text(0.1, y[layer] + 0.55, f"{layer}  ({len(mods[layer])} modules, {lines} lines)", fontsize=10,
                weight="bold")
        ax.text(0.1, y[layer] + 0.2, names[:110] + ("..." if len(names) > 110 else ""), fontsize=6.5)
    for i, ((f, t), n) in enumerate(sorted(edges.items())):
        if f in y and t in y:
            x = 6.3 + 0.22 * (i % 14)
            up = y[t] > y[f]
            ax.annotate("", xy=(x, y[t] + 0.4), xytext=(x, y[f] + 0.4),
                        arrowprops={"arrowstyle": "->", "color": "red" if up else "#888", "lw": 0.8})
            ax.text(x + 0.02, (y[f] + y[t]) / 2 + 0.4, str(n), fontsize=5)
    ax.set_xlim(0, 9.5)
    ax.set_ylim(-0.2, 1.1 * len(present))
    ax.axis("off")
    ax.set_title("kadet's layers (each imports only from those below; arrows: imports between layers)", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--png", type=Path, help="also draw the layers into this PNG")
    args = ap.parse_args()
    mods, edges = read(args.repo)
    print(table(mods, edges))
    if args.png:
        draw(mods, edges, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
