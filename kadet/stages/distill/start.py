"""Where the student starts (``distill.init``) and how it is loaded: the base model
(``retrieval.model``) or the registry's current champion, with dropout off.

With ``distill.init: champion``, in query mode the student's query tower starts from the champion's
query tower and the document tower stays the base model; in full mode the whole model starts from
the champion. Without a usable champion (none yet, another mode or base model) the student starts
from the base model, and the log, the manifest (``extra.init``) and the MLflow run
(:data:`INIT_TAGS`) say why.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kadet.core.config import KadetConfig
from kadet.core.errors import KadetError
from kadet.kit.models import resolve_model_path
from kadet.stages.distill.parallel import Ranks

log = logging.getLogger("kadet.distill")   # the stage's one logger: its name is in the log lines

#: Tags of the distill stage's MLflow run: where training started (``base`` or ``champion``), the
#: champion version, and why a champion start fell back to the base model.
INIT_TAGS = {"from": "kadet.init_from", "version": "kadet.init_version", "reason": "kadet.init_reason"}


class NoChampion(Exception):
    """Why ``distill.init: champion`` cannot start from the champion (it starts from the base)."""


@dataclass
class Champion:
    """The registry's champion, as the registry layer hands it to distill: its version, the local
    folder of its files and its registry tags."""

    version: str
    folder: Path
    tags: dict = field(default_factory=dict)


#: ``find(cfg, scratch) -> Champion``: looks the champion up and fetches its files into ``scratch``
#: if they are remote; raises :class:`NoChampion` saying why there is none. The stage knows no
#: registry: whoever runs distill passes :func:`kadet.registry.register.find_champion`.
ChampionFinder = Callable[[KadetConfig, Path], Champion]


@dataclass
class Init:
    """Where the student starts: ``path`` is a plain sentence-transformers folder it loads."""

    source: str                       # "base" or "champion"
    path: Path
    version: str | None = None        # the champion's registry version
    reason: str = ""                  # why a champion start fell back to the base model
    key: str = ""                     # what a checkpoint records of the start ("" = the base model)
    scratch: tempfile.TemporaryDirectory | None = None

    def record(self) -> dict:
        """``manifest.extra["init"]``: ``{"from": ..., "version": N or None[, "reason": ...]}``."""
        return {"from": self.source, "version": int(self.version) if self.version else None,
                **({"reason": self.reason} if self.reason else {})}

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None


def init_tags(record: Mapping | None) -> dict[str, str]:
    """The MLflow tags (:data:`INIT_TAGS`) of a manifest's ``extra["init"]`` (none for an older one)."""
    return {INIT_TAGS[k]: str(v) for k, v in (record or {}).items() if k in INIT_TAGS and v is not None}


def resolve_init(cfg: KadetConfig, base_path: Path, find_champion: ChampionFinder | None = None) -> Init:
    """``distill.init``: the base model, or the champion's weights (:func:`champion_start`, found by
    ``find_champion``); a champion that cannot be used (none yet, another mode or base model, no
    registry given) falls back to the base."""
    if cfg.distill.init == "base":
        return Init("base", base_path)
    if find_champion is None:
        why = "this distill run was given no registry to find it in"
        log.warning("distill: distill.init is champion, but %s: starting from the base model %s", why,
                    cfg.retrieval.model)
        return Init("base", base_path, reason=why)
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="init-", dir=cfg.cache_dir)
    try:
        version, path, key = champion_start(cfg, base_path, Path(scratch.name), find_champion)
    except NoChampion as why:
        scratch.cleanup()
        log.warning("distill: distill.init is champion, but %s: starting from the base model %s",
                    why, cfg.retrieval.model)
        return Init("base", base_path, reason=str(why))
    except BaseException:
        scratch.cleanup()
        raise
    log.info("distill: starting from champion v%s of %s (distill.init: champion, %s mode)", version,
             cfg.register.model_name, cfg.distill.mode)
    return Init("champion", path, version=version, key=key, scratch=scratch)


def champion_start(cfg: KadetConfig, base_path: Path, scratch: Path, find_champion: ChampionFinder) -> tuple[str, Path, str]:
    """``(version, folder the student loads, checkpoint key)`` of the registry's champion; raises
    :class:`NoChampion` saying why it cannot be the start."""
    champion = find_champion(cfg, scratch)
    trained_from = champion.tags.get("kadet.base_model", "")
    if trained_from and not same_model(trained_from, cfg.retrieval.model):
        raise NoChampion(f"champion v{champion.version} was trained from {trained_from}, "
                         f"not from retrieval.model {cfg.retrieval.model}")
    path = start_tower(cfg, champion.folder, base_path, champion.version, scratch)
    fingerprint = champion.tags.get("kadet.model_fingerprint", "")
    return champion.version, path, f"champion {cfg.register.model_name} v{champion.version} {fingerprint}"


def same_model(a: str, b: str) -> bool:
    """Whether two ``retrieval.model`` values name the same model (a packaged name or a folder)."""
    if a == b:
        return True
    try:
        return resolve_model_path(a).resolve() == resolve_model_path(b).resolve()
    except KadetError:
        return False


def start_tower(cfg: KadetConfig, folder: Path, base_path: Path, version: str, scratch: Path) -> Path:
    """The champion folder the student starts from: a full-mode champion as it is; of a query-side
    champion its query tower, written to ``scratch`` as a plain folder, if its document tower is
    the base model (else the corpus index would not match)."""
    from sentence_transformers import SentenceTransformer

    from kadet.kit.encode import route_fingerprint
    from kadet.kit.towers import model_mode, quiet_router_lengths, save_tower

    mode = model_mode(folder)
    if mode != cfg.distill.mode:
        raise NoChampion(f"champion v{version} is a {mode}-mode model and distill.mode is {cfg.distill.mode}")
    if mode == "full":
        return folder
    quiet_router_lengths()
    champion = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    base = SentenceTransformer(str(base_path), device="cpu", local_files_only=True)
    if route_fingerprint(champion, "document") != route_fingerprint(base, "document"):
        raise NoChampion(f"champion v{version}'s document tower is not the base model {cfg.retrieval.model}")
    save_tower(champion, "query", scratch / "query-tower")
    return scratch / "query-tower"


def check_init_agrees(init: Init, ranks: Ranks, device: str) -> None:
    """Data-parallel ranks each resolve the champion: they must have found the same version."""
    if not ranks.parallel:
        return
    mine = torch.tensor([[int(init.version or 0)]], device=device)
    seen = sorted({int(v) for v in ranks.gather(mine)[0].reshape(-1)})
    if len(seen) > 1:
        raise KadetError(f"distill.init champion: the ranks started from different champion versions {seen} "
                         "(the alias moved while they started); rerun the distill step")


def load_student(path: Path, device: str):
    """The student: the sentence-transformers folder ``path``, with dropout off (:func:`no_dropout`)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    no_dropout(model)
    check_deterministic(model, device, str(path))
    return model


def no_dropout(model: torch.nn.Module) -> None:
    """Set every ``torch.nn.Dropout``'s probability to 0 (Hugging Face BERT-family attention reads
    its ``dropout.p`` too), so the student in train mode encodes deterministically.

    Why dropout is off in training: METHOD.md's recipe says "dropout 0", and every figure kadet
    reports (docs/adaptation.md, the main job's nDCG@10) was measured with it off. GradCache
    (:mod:`kadet.stages.distill.gradcache`) relies on it: it encodes every chunk twice, once without a graph for
    the loss and once with one for the gradients, and the two passes must give the same
    embeddings; with dropout on they would draw different masks (GradCache replays no random
    state; :func:`check_deterministic` refuses a student whose dropout stays on)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def check_deterministic(model, device: str, name: str) -> None:
    """Refuse a student that still encodes randomly in train mode (dropout that :func:`no_dropout`
    cannot reach, e.g. a rate an architecture reads from its config): GradCache's two passes would
    disagree and its gradients would be wrong."""
    features = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model.preprocess(["kadet"]).items()}
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            a, b = (model(dict(features))["sentence_embedding"] for _ in range(2))
    finally:
        model.train(was_training)
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-5):  # dropout moves embeddings far more than this
        raise KadetError(f"distill: {name} encodes randomly in train mode (dropout kadet cannot switch off); "
                         "GradCache needs the same embedding from both of its passes")
