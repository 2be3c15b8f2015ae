"""Retention: a bound on what grows with every run, and ``kadet prune``.

What each run adds under ``--work-dir`` (default ``.kadet``), and what prune keeps of it
(``retention.keep_runs`` = N, default 3):

- ``kfp/<pipeline>-<time>/``: every task's outputs of a local run (KFP). The newest N.
- ``logs/``: each ``kadet run``'s console log (``kadet-run-<time>.log`` + ``.events.jsonl``)
  and each pipeline run's stage logs (``logs/<run key>/``). The newest N of each.
- ``resume/<run key>/``: resumable logs of tasks that failed (a task that succeeds removes
  its own). Those of runs newer than the newest successful run; with no successful run, all.
- ``store/<kind>/<settings digest>/``: generations and teacher scores kept for later runs;
  ``used.json`` names the last run that read the folder. Those last used by one of the newest
  N runs or by the newest successful run.
- the MLflow registry (``register.model_name``; ``--all-models``: every registered model, as the
  cluster's nightly ``kadet-prune`` CronJob runs it, manifests/pipeline-access/base/prune.yaml):
  a version per run; a refused one (gate failed, not champion) holds a
  whole model. The newest N refused versions; prune deletes the older ones with their logged
  model's files where those lie in the work dir (a server's stay until its own ``mlflow gc``).
  The register run that refused it stays, with its report and model card.

Never pruned: a registry version with an alias (the champion, the challenger), a former
champion (a roll-back target), anything written in the last hour under ``resume/`` or
``store/`` (a task may be writing it), a store folder with no ``used.json`` unless it is older
than an hour. ``mlflow.db``, the small run artifacts and ``cache/`` (the embedding cache and
the dequantised LLM, rebuilt on demand) are not pruned.

    removals = prune(cfg, keep=3, dry_run=True)      # what would go, with sizes
    print(format_removals(removals, dry_run=True, keep=3))
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from kadet.core.storage import mask_uri
from kadet.core.io import read_json
from kadet.core.config import KadetConfig
from kadet.core.errors import KadetError

log = logging.getLogger(__name__)

#: What was written this recently is never pruned from ``resume/`` and ``store/``: cluster tasks
#: share those folders without taking the work-dir lock, so one may be writing there now.
RECENT_S = 3600
USED_FILE = "used.json"


@dataclass(frozen=True)
class PipelineRun:
    """A pipeline run as the MLflow store knows it (its parent run)."""

    key: str
    start: float          # unix seconds
    status: str           # RUNNING, FINISHED, FAILED, KILLED


@dataclass
class Removal:
    """One thing prune removes: folders or files, or a registry version (``version``)."""

    kind: str             # kfp, logs, resume, store, model
    what: str             # the path under the work dir, or "<model name> v<N>"
    size: int | None      # bytes freed (None: not known, a remote store's files)
    why: str
    paths: tuple[Path, ...] = ()
    version: dict = field(default_factory=dict)   # {"name", "version", "model_id"} for kind "model"


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def tree_mtime(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    newest = path.stat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            p = os.path.join(root, name)
            if not os.path.islink(p):
                newest = max(newest, os.path.getmtime(p))
    return newest


def human(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()) if path.is_dir() else []


def _newest_first(units: Iterable[tuple[str, tuple[Path, ...]]]) -> list[tuple[str, tuple[Path, ...]]]:
    return sorted(units, key=lambda u: max(p.stat().st_mtime for p in u[1]), reverse=True)


def _older_units(kind: str, units, keep: int, what: str) -> list[Removal]:
    """Removals for every unit (``(name, paths)``) but the newest ``keep`` by modification time."""
    return [Removal(kind, name, sum(tree_size(p) for p in paths), f"older than the newest {keep} {what}", paths)
            for name, paths in _newest_first(units)[keep:]]


def kfp_removals(work: Path, keep: int) -> list[Removal]:
    """``kfp/<pipeline>-<time>/``: one folder per local run."""
    units = [(str(p.relative_to(work)), (p,)) for p in _folders(work / "kfp")]
    return _older_units("kfp", units, keep, "runs' KFP outputs")


def log_removals(work: Path, keep: int) -> list[Removal]:
    """``logs/kadet-run-<time>.*`` (one console log per ``kadet run``) and ``logs/<run key>/``."""
    logs = work / "logs"
    consoles: dict[str, list[Path]] = {}
    for f in sorted(logs.glob("kadet-run-*")) if logs.is_dir() else []:
        if f.is_file():
            consoles.setdefault(f.name.split(".")[0], []).append(f)
    console_units = [(f"logs/{stem}.*", tuple(paths)) for stem, paths in consoles.items()]
    stage_units = [(str(p.relative_to(work)), (p,)) for p in _folders(logs)]
    return (_older_units("logs", console_units, keep, "console logs")
            + _older_units("logs", stage_units, keep, "runs' stage logs"))


def newest_success(runs: dict[str, PipelineRun]) -> PipelineRun | None:
    done = [r for r in runs.values() if r.status == "FINISHED"]
    return max(done, key=lambda r: r.start) if done else None


def resume_removals(work: Path, runs: dict[str, PipelineRun], now: float) -> list[Removal]:
    """``resume/<run key>/`` of runs that started no later than the newest successful run (a
    folder whose run MLflow does not know counts from its newest file)."""
    ok = newest_success(runs)
    if ok is None:  # no successful run: a rerun may still need any of them
        return []
    out = []
    for p in _folders(work / "resume"):
        run, newest = runs.get(p.name), tree_mtime(p)
        if (run and run.status == "RUNNING") or now - newest < RECENT_S:
            continue
        started = run.start if run else newest
        if started <= ok.start:
            out.append(Removal("resume", str(p.relative_to(work)), tree_size(p),
                               f"a run no newer than the newest successful one ({ok.key})", (p,)))
    return out


def read_used(folder: Path) -> tuple[str, float] | None:
    """``(run key, unix time)`` of a store folder's ``used.json``, None if missing or unreadable."""
    try:
        used = read_json(folder / USED_FILE)
        return str(used["run"]), float(used["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_removals(work: Path, runs: dict[str, PipelineRun], keep: int, now: float) -> list[Removal]:
    """``store/<kind>/<digest>/`` folders last used by none of the newest ``keep`` runs (runs as
    MLflow and the ``used.json`` files know them) nor by the newest successful run."""
    folders = [d for kind in _folders(work / "store") for d in _folders(kind)]
    used = {d: read_used(d) for d in folders}
    when = {k: r.start for k, r in runs.items()}
    for u in filter(None, used.values()):
        when[u[0]] = max(when.get(u[0], 0.0), u[1])
    protected = set(sorted(when, key=when.get, reverse=True)[:keep])
    if (ok := newest_success(runs)) is not None:
        protected.add(ok.key)
    out = []
    for d in folders:
        u = used[d]
        if u is None and now - tree_mtime(d) >= RECENT_S:
            why = f"no {USED_FILE} and untouched for over an hour"
        elif u is not None and u[0] not in protected and now - u[1] >= RECENT_S:
            why = f"last used by run {u[0]} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(u[1]))}), " \
                  f"none of the newest {keep} runs"
        else:
            continue
        out.append(Removal("store", str(d.relative_to(work)), tree_size(d), why, (d,)))
    return out


def _store_missing(cfg: KadetConfig) -> bool:
    from kadet.registry import tracking

    uri = tracking.tracking_uri(cfg)
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def pipeline_runs(cfg: KadetConfig) -> dict[str, PipelineRun]:
    """Every pipeline run of the configured experiment: ``{run key: PipelineRun}`` (its parent run)."""
    from kadet.registry import tracking

    if _store_missing(cfg):
        return {}
    c = tracking.client(cfg)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return {}
    runs, token = {}, None
    while True:
        page = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.PIPELINE_TAG}` != ''",
                             max_results=1000, page_token=token)
        for r in page:
            if "mlflow.parentRunId" not in r.data.tags:
                key = r.data.tags[tracking.PIPELINE_TAG]
                runs[key] = PipelineRun(key, r.info.start_time / 1000.0, r.info.status)
        token = page.token
        if not token:
            return runs


def local_path(uri: str) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact location; None for a remote one."""
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri)
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _model_files(c, v, work: Path) -> tuple[str | None, Path | None]:
    """``(logged model id, its folder)`` of a registry version; the folder only where it lies in
    the work dir (a remote store's files, or those of a store this work dir was copied from, stay)."""
    model_id = v.model_id or (v.source.removeprefix("models:/") if (v.source or "").startswith("models:/m-") else None)
    folder = local_path(c.get_model_version_download_uri(v.name, v.version))
    if folder is None or not folder.resolve().is_relative_to(work):
        return model_id, None
    if model_id and folder.name == "artifacts" and folder.parent.name == model_id:
        folder = folder.parent                       # <artifacts>/models/<model id>/artifacts
    return model_id, folder


def model_names(cfg: KadetConfig, all_models: bool = False) -> list[str]:
    """``register.model_name``, or (``all_models``) every registered model of the store: on a
    cluster each corpus registers its own (``kadet-<corpus>``). Only versions kadet's gate refused
    are ever removed, so a model kadet did not register loses nothing."""
    if not all_models:
        return [cfg.register.model_name]
    from kadet.registry import tracking

    c, names, token = tracking.client(cfg), [], None
    while True:
        page = c.search_registered_models(max_results=1000, page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            return sorted(names)


def model_removals(cfg: KadetConfig, keep: int, work: Path, name: str | None = None) -> list[Removal]:
    """Refused versions (gate failed, no alias) of ``name`` (default ``register.model_name``) but
    the newest ``keep``."""
    from mlflow.exceptions import MlflowException

    from kadet.registry import tracking
    from kadet.registry.register import model_versions

    if _store_missing(cfg):
        return []
    name, c = name or cfg.register.model_name, tracking.client(cfg)
    try:
        aliased = {str(v) for v in c.get_registered_model(name).aliases.values()}
    except MlflowException:   # no such model yet
        return []
    refused = [v for v in model_versions(c, name)
               if (v.tags or {}).get(tracking.GATE_TAG) == "failed" and str(v.version) not in aliased]
    refused.sort(key=lambda v: int(v.version), reverse=True)
    out = []
    for v in refused[keep:]:
        model_id, folder = _model_files(c, v, work)
        size = (tree_size(folder) if folder.exists() else 0) if folder else None
        out.append(Removal("model", f"{name} v{v.version}", size,
                           f"refused ({(v.tags or {}).get('kadet.gate_failure', 'gate failed')[:80]}), older than "
                           f"the newest {keep} refused versions", (folder,) if folder else (),
                           {"name": name, "version": str(v.version), "model_id": model_id}))
    return out


def plan(cfg: KadetConfig, keep: int | None = None, now: float | None = None,
         all_models: bool = False) -> list[Removal]:
    """Everything prune would remove, oldest kinds of growth first; removes nothing (``all_models``:
    the refused versions of every registered model, not only ``register.model_name``'s)."""
    keep = cfg.retention.keep_runs if keep is None else keep
    if keep < 1:
        raise KadetError(f"prune: --keep / retention.keep_runs = {keep} must be >= 1 (the newest run is never pruned)")
    work, now = Path(cfg.work_dir).resolve(), time.time() if now is None else now
    try:
        runs = pipeline_runs(cfg)
        models = [] if _store_missing(cfg) else [
            r for name in model_names(cfg, all_models) for r in model_removals(cfg, keep, work, name)]
    except Exception as exc:   # a server that is down: say so instead of guessing what is safe
        from kadet.registry import tracking

        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise KadetError(f"prune: cannot read the runs and registry at {mask_uri(tracking.tracking_uri(cfg))} ({detail}); "
                         "nothing removed") from None
    return [*kfp_removals(work, keep), *log_removals(work, keep), *resume_removals(work, runs, now),
            *store_removals(work, runs, keep, now), *models]


def remove(cfg: KadetConfig, r: Removal) -> None:
    """Carry out one removal (a registry version: the version, its logged model and its files)."""
    if r.kind == "model":
        from kadet.registry import tracking

        c = tracking.client(cfg)
        c.delete_model_version(r.version["name"], r.version["version"])
        if r.version.get("model_id"):
            c.delete_logged_model(r.version["model_id"])
    for p in r.paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def prune(cfg: KadetConfig, keep: int | None = None, dry_run: bool = False, all_models: bool = False) -> list[Removal]:
    """Remove what :func:`plan` lists (``dry_run``: nothing); returns the list."""
    removals = plan(cfg, keep, all_models=all_models)
    if not dry_run:
        for r in removals:
            remove(cfg, r)
            log.info("prune: removed %s %s (%s): %s", r.kind, r.what, human(r.size), r.why)
    return removals


def format_removals(removals: list[Removal], dry_run: bool, keep: int) -> str:
    """One line per removal with its size, then the total."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"  {human(r.size):>9}  {r.kind:<6} {r.what}  ({r.why})" for r in removals]
    total = sum(r.size or 0 for r in removals)
    unknown = " (plus model files outside the work dir, left in place: a server's `mlflow gc` frees them)" if any(
        r.size is None for r in removals) else ""
    lines.append(f"kadet prune: {verb} {len(removals)} item(s), {human(total)}{unknown}; kept the newest {keep} "
                 "runs' outputs, logs and stores, the champion, and the resume logs of runs newer than the newest "
                 "successful one")
    return "\n".join(lines)


def auto_prune(cfg: KadetConfig) -> str | None:
    """After a successful ``kadet run`` with ``retention.auto``: prune, and the line to print."""
    if not cfg.retention.auto:
        return None
    removals = prune(cfg)
    return f"retention.auto: removed {len(removals)} item(s) older runs left, " \
           f"{human(sum(r.size or 0 for r in removals))} (kept the newest {cfg.retention.keep_runs} runs)"
