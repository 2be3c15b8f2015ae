"""Facts about the house anyone can check: the layers import only downward, no import cycle, every
module imports alone, no long function."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The longest function kadet/ may hold (def line to last line).
MAX_FUNCTION_LINES = 60
#: kadet's layers, lowest first: a module of ``kadet/<layer>/`` imports only from its own layer and
#: the ones before it (docs/design.md, "Layers", draws them and says what each holds).
LAYERS = ("core", "kit", "llm", "stages", "registry", "reporting", "tools", "kubeflow", "cli")


def modules(root: Path = REPO) -> dict[str, Path]:
    """``{"kadet.stages.generate.clean": path}`` for every module of the library under ``root``."""
    out = {}
    for path in sorted((root / "kadet").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def kadet_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The kadet modules ``path`` imports anywhere: module level and inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    # a module, not a name in it; and never the package itself (importing kadet.x runs kadet/__init__)
    return {m for m in found if m in known and m != name and m != "kadet"}


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``kadet.<layer>...``; None for ``kadet`` itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def upward_imports(root: Path) -> list[str]:
    """Every import in ``root/kadet`` (module level or inside a function) that goes to a higher
    layer, or from or to a module that sits in no layer: ``"kadet.core.io -> kadet.kit.data"``."""
    found = []
    for name, path in modules(root).items():
        mine = layer_of(name)
        if mine == -1:
            found.append(f"{name} is in no layer (kadet/<one of {', '.join(LAYERS)}>/)")
            continue
        for target in sorted(kadet_imports(path, name, set(modules(root)))):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and (theirs == -1 or theirs > mine):
                found.append(f"{name} -> {target}")
    return found


def test_the_layers_import_only_downward():
    assert upward_imports(REPO) == []


def test_the_layer_check_finds_an_import_that_goes_up(tmp_path):
    """The check above is not vacuous: a copy of kadet/ with one upward import (the core's config
    importing a stage) fails it, and so does a module outside every layer."""
    import shutil

    shutil.copytree(REPO / "kadet", tmp_path / "kadet", ignore=shutil.ignore_patterns("__pycache__"))
    assert upward_imports(tmp_path) == []
    config = tmp_path / "kadet" / "core" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _up():\n    from kadet.stages.mine import mine\n")
    (tmp_path / "kadet" / "helpers.py").write_text("from kadet.core import io\n")
    assert upward_imports(tmp_path) == ["kadet.core.config -> kadet.stages.mine", "kadet.helpers is in no layer "
                                        f"(kadet/<one of {', '.join(LAYERS)}>/)"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_even_through_function_level_imports():
    mods = modules()
    graph = {name: kadet_imports(path, name, set(mods)) for name, path in mods.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_imports_alone_in_a_fresh_interpreter():
    def alone(name: str) -> tuple[str, str]:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True)
        return name, r.stderr.strip().splitlines()[-1] if r.returncode else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = {name: err for name, err in pool.map(alone, [m for m in modules() if not m.endswith('.__main__')]) if err}
    assert failed == {}


def test_no_function_in_kadet_is_longer_than_sixty_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_only_the_kubeflow_layer_imports_kfp():
    """The library runs without KFP below its adapter (kadet/kubeflow/): stages, tools and the
    registry never import it, even inside a function."""
    found = []
    for name, path in modules().items():
        if name.startswith("kadet.kubeflow"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{name} imports {n}" for n in names if n == "kfp" or n.startswith("kfp.")]
    assert found == []
