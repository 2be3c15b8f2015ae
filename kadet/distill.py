"""Stage 5, distill: train the embedding model on the teacher's labels.

Loss (``kadet.losses``): listwise KL from the teacher's scores plus 0.1 x InfoNCE with
false-negative masking (``distill.loss=listwise``), or InfoNCE alone (``infonce``), the
paper's contrast. Every optimizer step sees ``distill.batch_size`` queries x ``list_size``
passages through GradCache (``kadet.gradcache``), whatever the memory: only
``distill.chunk_size`` texts are in a forward pass at a time.

Modes (``distill.mode``):

``full``   the whole model is tuned, as in the paper; the corpus must be re-indexed.
``query``  query-side tuning: the document tower is frozen, passage embeddings are computed
           once (through the embedding cache) and reused, and the existing corpus index stays
           valid. Saved as an asymmetric sentence-transformers model (a ``Router`` whose
           ``document`` route is the untouched base model), so ``SentenceTransformer(path)``
           loads it and ``encode_query`` / ``encode_document`` pick the right tower.

Start (``distill.init``): the base model (``retrieval.model``), or the registry's current champion
(:func:`resolve_init`): in query mode the student's query tower starts from the champion's query
tower and the document tower stays the base model; in full mode the whole model starts from the
champion. Without a usable champion the student starts from the base model, and the log, the
manifest (``extra.init``) and the MLflow run (:data:`INIT_TAGS`) say why.

Loop: AdamW, warmup for half an epoch then linear decay to 0.1 x, gradient clip 1.0, a
checkpoint every epoch (``checkpoints/epoch-N``; rerunning resumes from the last one), early
stopping on dev loss (patience 2), bf16 autocast on CUDA, seeded. Under ``torchrun
--nproc_per_node N`` it trains data-parallel (:mod:`kadet.parallel`): each rank encodes 1/N of
every batch, the loss and step are the single-process ones; rank 0 writes the files. Outputs::

    model/            best model by dev loss (SentenceTransformer folder)
    curves.json       per-step train loss and lr, per-epoch dev loss
    manifest.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pickle
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kadet import card
from kadet.config import KadetConfig
from kadet.data import read_records, write_json
from kadet.errors import KadetError
from kadet.gradcache import Tower, grad_cache_step
from kadet.losses import cosine_scores, distill_loss
from kadet.manifest import Manifest, fingerprint
from kadet.models import resolve_device, resolve_model_path
from kadet.parallel import Ranks

log = logging.getLogger(__name__)

LABEL_FIELDS = {"query": str, "passages": list, "split": str}


def lr_factor(step: int, warmup: int, total: int, final: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay to ``final`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 1.0 - (1.0 - final) * min(1.0, (step - warmup) / span)


def _no_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


#: Tags of the distill stage's MLflow run: where training started (``base`` or ``champion``), the
#: champion version, and why a champion start fell back to the base model.
INIT_TAGS = {"from": "kadet.init_from", "version": "kadet.init_version", "reason": "kadet.init_reason"}


class NoChampion(Exception):
    """Why ``distill.init: champion`` cannot start from the champion (it starts from the base)."""


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


def resolve_init(cfg: KadetConfig, base_path: Path) -> Init:
    """``distill.init``: the base model, or the champion's weights (:func:`champion_start`); a
    champion that cannot be used (none yet, another mode or base model) falls back to the base."""
    if cfg.distill.init == "base":
        return Init("base", base_path)
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="init-", dir=cfg.cache_dir)
    try:
        version, path, key = champion_start(cfg, base_path, Path(scratch.name))
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


def champion_start(cfg: KadetConfig, base_path: Path, scratch: Path) -> tuple[str, Path, str]:
    """``(version, folder the student loads, checkpoint key)`` of the registry's champion; raises
    :class:`NoChampion` saying why it cannot be the start."""
    from kadet import tracking
    from kadet.register import FINGERPRINT_TAG, alias_version, local_model_dir

    reg, uri = cfg.register, tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise NoChampion(f"there is no MLflow store at {uri} yet")
    c = tracking.client(cfg)
    mv = alias_version(c, reg.model_name, reg.champion_alias)
    if mv is None:
        raise NoChampion(f"{reg.model_name} has no {reg.champion_alias!r} version yet in {uri}")
    trained_from = (mv.tags or {}).get("kadet.base_model", "")
    if trained_from and not same_model(trained_from, cfg.retrieval.model):
        raise NoChampion(f"champion v{mv.version} was trained from {trained_from}, "
                         f"not from retrieval.model {cfg.retrieval.model}")
    source = c.get_model_version_download_uri(reg.model_name, mv.version)
    local = "://" not in source or source.startswith("file:")
    folder = local_model_dir(source, tracking_uri=uri, dst_path=None if local else scratch / "champion")
    path = start_tower(cfg, folder, base_path, str(mv.version), scratch)
    return str(mv.version), path, f"champion {reg.model_name} v{mv.version} {(mv.tags or {}).get(FINGERPRINT_TAG, '')}"


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

    from kadet.encode import route_fingerprint
    from kadet.export import model_mode, save_tower

    mode = model_mode(folder)
    if mode != cfg.distill.mode:
        raise NoChampion(f"champion v{version} is a {mode}-mode model and distill.mode is {cfg.distill.mode}")
    if mode == "full":
        return folder
    champion = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    base = SentenceTransformer(str(base_path), device="cpu", local_files_only=True)
    if route_fingerprint(champion, "document") != route_fingerprint(base, "document"):
        raise NoChampion(f"champion v{version}'s document tower is not the base model {cfg.retrieval.model}")
    save_tower(champion, "query", scratch / "query-tower")
    return scratch / "query-tower"


class Distiller:
    """Holds the model, data, optimizer and schedule; :meth:`train` runs or resumes training."""

    def __init__(self, cfg: KadetConfig, labels_path: str | Path, output_dir: str | Path):
        from sentence_transformers import SentenceTransformer

        self.cfg, self.d = cfg, cfg.distill
        self.out = Path(output_dir)
        rows = read_records(labels_path, "qid", LABEL_FIELDS)
        self.train_rows = [r for r in rows if r["split"] == "train"]
        self.dev_rows = [r for r in rows if r["split"] == "dev"]
        if self.d.max_train_queries:
            self.train_rows = self.train_rows[: self.d.max_train_queries]
        if not self.train_rows:
            raise KadetError(f"{labels_path}: no training queries (split == 'train')")
        self.labels_path = labels_path
        device = resolve_device(self.d.device)
        self.ranks = Ranks.from_env(device)
        self.device = self.ranks.device(device)
        torch.manual_seed(cfg.seed)
        self.base_path = resolve_model_path(cfg.retrieval.model)
        self.init = resolve_init(cfg, self.base_path)
        self._check_init_agrees()
        self.model = SentenceTransformer(str(self.init.path), device=self.device, local_files_only=True)
        _no_dropout(self.model)
        self.dim = int(self.model.get_embedding_dimension())
        doc_ids = sorted({p["doc_id"] for r in rows for p in r["passages"]})
        self.doc_index = {d: i for i, d in enumerate(doc_ids)}
        self.doc_text = {p["doc_id"]: p["text"] for r in rows for p in r["passages"]}
        self.doc_emb = None
        if self.d.mode == "query":
            from kadet.encode import Encoder

            enc = Encoder(self.base_path, device=self.device,
                          cache_dir=cfg.cache_dir if cfg.retrieval.embedding_cache else None,
                          document_prompt=cfg.retrieval.passage_prompt)
            emb = enc.encode([self.doc_text[d] for d in self.ranks.share(doc_ids)], kind="document")
            self.doc_emb = self.ranks.gather(torch.from_numpy(emb).reshape(-1, self.dim).to(self.device))[0]
            del enc
        self.run_key = self._run_key(cfg, labels_path, self.init.key)
        self.teacher_temp = self.d.teacher_temp
        if self.d.auto_teacher_temp:
            self.teacher_temp = self.calibrate_teacher_temp()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.d.lr, weight_decay=self.d.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_rows) / self.d.batch_size)
        self.warmup = max(1, round(self.d.warmup_epochs * self.steps_per_epoch))
        self.total = self.steps_per_epoch * self.d.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.warmup, self.total, self.d.final_lr_ratio))
        self.state = {"epoch": 0, "step": 0, "best_dev": None, "best_epoch": None, "bad_epochs": 0,
                      "curves": {"step": [], "train_loss": [], "lr": [], "epoch": [], "dev_loss": [],
                                 "epoch_train_loss": []}}

    @staticmethod
    def _run_key(cfg: KadetConfig, labels_path, init_key: str = "") -> str:
        """What a checkpoint depends on: the training settings, base model, start, seed and labels."""
        d = {k: v for k, v in dataclasses.asdict(cfg.distill).items() if k not in ("progress", "device")}
        blob = json.dumps({"distill": d, "model": cfg.retrieval.model, "seed": cfg.seed, "init": init_key,
                           "labels": fingerprint(labels_path)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _check_init_agrees(self) -> None:
        """Data-parallel ranks each resolve the champion: they must have found the same version."""
        if not self.ranks.parallel:
            return
        mine = torch.tensor([[int(self.init.version or 0)]], device=self.device)
        seen = sorted({int(v) for v in self.ranks.gather(mine)[0].reshape(-1)})
        if len(seen) > 1:
            raise KadetError(f"distill.init champion: the ranks started from different champion versions {seen} "
                             "(the alias moved while they started); rerun the distill step")

    @torch.no_grad()
    def calibrate_teacher_temp(self, grid: int = 41) -> float:
        """The teacher temperature (log grid 0.01 .. 1) that minimises the mean listwise KL
        between the teacher's targets and the untrained student on the training lists."""
        from kadet.losses import listwise_kl

        self.model.eval()
        rows = self.train_rows[:512]
        kls = torch.zeros(grid, dtype=torch.float64)
        temps = torch.logspace(-2, 0, grid, dtype=torch.float64)
        for s in range(0, len(rows), self.d.batch_size):
            chunk = rows[s : s + self.d.batch_size]
            q_texts, docs, teacher, ids, lsize = self._batch(chunk)
            q, p = self._encode_batch(q_texts, docs)
            cos = cosine_scores(q, p.view(len(chunk), lsize, -1))
            for i, t in enumerate(temps):
                kls[i] += float(listwise_kl(cos, teacher, self.d.student_temp, float(t))) * len(chunk)
        best = float(temps[int(torch.argmin(kls))])
        log.info("distill: teacher temperature %.3g (mean KL at start %.4f; at %.3g it was %.4f)", best,
                 float(kls.min()) / len(rows), self.d.teacher_temp,
                 float(listwise_kl_at(kls, temps, self.d.teacher_temp)) / len(rows))
        return best

    # ------------------------------------------------------------------ encoding
    def _autocast(self):
        if self.device.startswith("cuda") and self.d.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        self.model.max_seq_length = max_len
        features = self.model.preprocess(texts)
        features = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in features.items()}
        with self._autocast():
            return self.model(features)["sentence_embedding"].float()

    def _batch(self, rows: list[dict]):
        shortest = min(len(r["passages"]) for r in rows)
        lsize = min(self.d.list_size, shortest) if self.d.list_size else shortest  # 0: as labelled
        q_texts = [r["query"] for r in rows]
        docs = [[p["doc_id"] for p in r["passages"][:lsize]] for r in rows]
        teacher = torch.tensor([[p["score"] for p in r["passages"][:lsize]] for r in rows], dtype=torch.float64,
                               device=self.device)
        ids = torch.tensor([[self.doc_index[d] for d in lst] for lst in docs], device=self.device)
        return q_texts, docs, teacher, ids, lsize

    def _loss_fn(self, teacher, ids, b, lsize):
        d = self.d
        kl, nce = (d.kl_weight, d.nce_weight) if d.loss == "listwise" else (0.0, 1.0)

        def fn(q, p):
            return distill_loss(q, p.view(b, lsize, -1), teacher, ids, kl_weight=kl, nce_weight=nce,
                                student_temp=d.student_temp, teacher_temp=self.teacher_temp, nce_temp=d.nce_temp,
                                fn_threshold=d.fn_threshold)

        return fn

    def _towers(self, q_texts, docs):
        """This rank's towers: its share of the batch's queries and lists (all of them when alone)."""
        q_texts, docs = self.ranks.share(q_texts), self.ranks.share(docs)
        c = self.d.chunk_size
        q_chunks = [q_texts[i : i + c] for i in range(0, len(q_texts), c)]
        query = Tower(lambda chunk: self._encode(chunk, self.d.query_max_len), q_chunks, dim=self.dim,
                      device=self.device)
        flat = [d for lst in docs for d in lst]
        if self.d.mode == "query":  # frozen document tower: cached base-model embeddings
            idx = torch.tensor([self.doc_index[d] for d in flat], device=self.device)
            return [query, Tower(lambda i: self.doc_emb[i], [idx] if flat else [], trainable=False, dim=self.dim,
                                 device=self.device)]
        texts = [self.doc_text[d] for d in flat]
        p_chunks = [texts[i : i + c] for i in range(0, len(texts), c)]
        return [query, Tower(lambda chunk: self._encode(chunk, self.d.passage_max_len), p_chunks, dim=self.dim,
                             device=self.device)]

    def _encode_batch(self, q_texts, docs) -> list[torch.Tensor]:
        """The whole batch's query and passage embeddings, without a graph (each rank encodes its share)."""
        return [self.ranks.gather(t.encode_all())[0] for t in self._towers(q_texts, docs)]

    def train_step(self, rows: list[dict]) -> float:
        self.model.train()
        q_texts, docs, teacher, ids, lsize = self._batch(rows)
        loss = grad_cache_step(self._towers(q_texts, docs), self._loss_fn(teacher, ids, len(rows), lsize),
                               gather=self.ranks.gather if self.ranks.parallel else None)
        self.ranks.all_reduce_grads(self.params)
        torch.nn.utils.clip_grad_norm_(self.params, self.d.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss)

    @torch.no_grad()
    def dev_loss(self) -> float | None:
        if not self.dev_rows:
            return None
        self.model.eval()
        total, n = 0.0, 0
        for s in range(0, len(self.dev_rows), self.d.batch_size):
            rows = self.dev_rows[s : s + self.d.batch_size]
            q_texts, docs, teacher, ids, lsize = self._batch(rows)
            reps = self._encode_batch(q_texts, docs)
            total += float(self._loss_fn(teacher, ids, len(rows), lsize)(*reps)) * len(rows)
            n += len(rows)
        return total / n

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_dir(self, epoch: int) -> Path:
        return self.out / "checkpoints" / f"epoch-{epoch}"

    def save_checkpoint(self) -> Path:
        path = self._ckpt_dir(self.state["epoch"])
        if not self.ranks.main:
            return path
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"run_key": self.run_key, "model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "state": self.state, "rng": torch.get_rng_state(), "py_rng": random.getstate(),
                    "np_rng": _np_state_to_safe(np.random.get_state()),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "trainer.pt")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        for old in (self.out / "checkpoints").glob("epoch-*"):  # keep the last two
            if old.name.endswith(".tmp"):
                continue
            if int(old.name.split("-")[1]) < self.state["epoch"] - 1:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def resume(self) -> bool:
        ckpts = sorted((p for p in (self.out / "checkpoints").glob("epoch-*")
                        if not p.name.endswith(".tmp") and (p / "trainer.pt").exists()),
                       key=lambda p: int(p.name.split("-")[1]))
        if not ckpts:
            return False
        try:  # tensors and plain containers only: a checkpoint from a shared bucket cannot run code
            blob = torch.load(ckpts[-1] / "trainer.pt", map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise KadetError(f"{ckpts[-1] / 'trainer.pt'}: not a plain kadet checkpoint, refusing to load it "
                             f"({str(exc).splitlines()[0]}); delete the checkpoints folder to start over") from None
        if blob.get("run_key") != self.run_key:
            log.warning("distill: %s was made with other settings or labels (key %s, now %s): starting over",
                        ckpts[-1], blob.get("run_key"), self.run_key)
            self.ranks.barrier()  # every rank has read it before rank 0 removes it
            if self.ranks.main:
                shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
            return False
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.sched.load_state_dict(blob["sched"])
        self.state = blob["state"]
        torch.set_rng_state(blob["rng"])
        random.setstate(blob["py_rng"])
        np.random.set_state(_np_state_from_safe(blob["np_rng"]))
        if blob["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        log.info("resumed from %s", ckpts[-1])
        return True

    # ------------------------------------------------------------------ loop
    def train(self, max_epochs_this_run: int | None = None) -> dict:
        from kadet.progress import bar as progress_bar

        resumed = self.resume()
        run_epochs = 0
        t0 = time.perf_counter()
        while self.state["epoch"] < self.d.epochs and self.state["bad_epochs"] < self.d.patience:
            if max_epochs_this_run is not None and run_epochs >= max_epochs_this_run:
                break
            epoch = self.state["epoch"]
            order = list(range(len(self.train_rows)))
            random.Random(self.cfg.seed + epoch).shuffle(order)
            losses = []
            bar = progress_bar(desc=f"distill epoch {epoch + 1}/{self.d.epochs}",
                               show=self.d.progress and self.ranks.main,
                               iterable=range(0, len(order), self.d.batch_size))
            for s in bar:
                loss = self.train_step([self.train_rows[i] for i in order[s : s + self.d.batch_size]])
                losses.append(loss)
                c = self.state["curves"]
                c["step"].append(self.state["step"])
                c["train_loss"].append(loss)
                c["lr"].append(self.sched.get_last_lr()[0])
                self.state["step"] += 1
                bar.set_postfix(loss=f"{loss:.4f}")
            dev = self.dev_loss()
            self.state["epoch"] = epoch + 1
            c = self.state["curves"]
            c["epoch"].append(epoch + 1)
            c["dev_loss"].append(dev)
            c["epoch_train_loss"].append(float(np.mean(losses)))
            improved = dev is None or self.state["best_dev"] is None or dev < self.state["best_dev"] - 1e-9
            if improved:
                self.state.update(best_dev=dev, best_epoch=epoch + 1, bad_epochs=0)
                self.save_model(self.out / "model")
            else:
                self.state["bad_epochs"] += 1
            log.info("epoch %d: train loss %.4f, dev loss %s%s", epoch + 1, np.mean(losses),
                     "n/a" if dev is None else f"{dev:.4f}", " (best)" if improved else "")
            self.save_checkpoint()
            self.ranks.barrier()  # the model and checkpoint are on disk before any rank goes on
            run_epochs += 1
        if self.ranks.main:
            write_json(self.out / "curves.json", self.state["curves"], indent=1)
        return {"epochs": self.state["epoch"], "best_epoch": self.state["best_epoch"],
                "best_dev_loss": self.state["best_dev"], "resumed": resumed,
                "seconds_this_run": round(time.perf_counter() - t0, 1),
                "stopped_early": self.state["bad_epochs"] >= self.d.patience}

    def save_model(self, path: Path) -> None:
        """Save a folder ``SentenceTransformer(path)`` loads (asymmetric Router in query mode).

        With ``distill.base_weight`` > 0 the saved weights are interpolated with the base's.
        Rank 0 only (the weights are the same on every rank)."""
        if not self.ranks.main:
            return
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model
        if self.d.base_weight:
            model = interpolated(self.model, self.init.path, self.d.base_weight)
        if self.d.mode == "full":
            model.max_seq_length = self.d.passage_max_len
            model.save(str(tmp))
        else:
            save_query_side_model(model, self.base_path, tmp, self.d.query_max_len)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)


def _np_state_to_safe(state: tuple) -> tuple:
    """NumPy's legacy RNG state with its key array as a tensor (``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))


def _np_state_from_safe(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached)


def listwise_kl_at(kls: torch.Tensor, temps: torch.Tensor, temp: float) -> float:
    """The summed KL of the grid point nearest to ``temp`` (for the log line)."""
    return float(kls[int(torch.argmin((temps.log() - math.log(temp)).abs()))])


def interpolated(model, base_path: Path, base_weight: float):
    """A copy of ``model`` with every floating-point weight ``w`` replaced by
    ``base_weight x w_base + (1 - base_weight) x w`` (WiSE-FT); ``base_path`` is the model the
    tuning started from (the base model, or the champion's tower with ``distill.init: champion``),
    so the parameter names match."""
    import copy

    from sentence_transformers import SentenceTransformer

    if not 0.0 <= base_weight <= 1.0:
        raise KadetError(f"distill.base_weight must be in [0, 1], got {base_weight}")
    base = SentenceTransformer(str(base_path), device="cpu", local_files_only=True).state_dict()
    out = copy.deepcopy(model).to("cpu")
    state = out.state_dict()
    for name, w in state.items():
        if name not in base or base[name].shape != w.shape:
            raise KadetError(f"cannot interpolate with the base model: weight {name!r} differs")
        if w.is_floating_point():
            state[name] = base_weight * base[name].to(w.dtype) + (1.0 - base_weight) * w
    out.load_state_dict(state)
    return out


def save_query_side_model(query_model, base_path: Path, out: Path, query_max_len: int) -> None:
    """A Router model: ``query`` route = the tuned modules, ``document`` route = the base model.

    The default route (what ``encode()`` without a task uses) is ``query``: frameworks embed each
    user query with ``encode()``, and a document default would hand them the base model's query
    embeddings, silently undoing the training. Documents are indexed with ``encode_document()``
    (= the base model, so an existing index stays valid), or with ``kadet export``'s ``document/``."""
    import copy

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Router

    base = SentenceTransformer(str(base_path), device="cpu", local_files_only=True)
    tuned = copy.deepcopy(query_model).to("cpu")
    tuned.max_seq_length = query_max_len
    router = Router.for_query_document(query_modules=list(tuned), document_modules=list(base), default_route="query")
    SentenceTransformer(modules=[router], device="cpu").save(str(out))


def distill(cfg: KadetConfig, labels_path: str | Path, output_dir: str | Path,
            max_epochs_this_run: int | None = None) -> Manifest:
    """Run (or resume) training and write the manifest."""
    out = Path(output_dir)
    m = Manifest(stage="distill", config_hash=cfg.hash())
    m.add_input("labels", labels_path)
    trainer = Distiller(cfg, labels_path, out)
    try:
        result = trainer.train(max_epochs_this_run)
    finally:
        trainer.ranks.close()
        trainer.init.close()
    m.counts = {"train_queries": len(trainer.train_rows), "dev_queries": len(trainer.dev_rows),
                "epochs": result["epochs"]}
    m.outputs = {"model": "model", "curves": "curves.json"}
    m.extra = {**result, "teacher_temp": trainer.teacher_temp, "mode": cfg.distill.mode, "loss": cfg.distill.loss,
               "base_model": cfg.retrieval.model, "processes": trainer.ranks.world, "init": trainer.init.record()}
    if not trainer.ranks.main:
        return m
    if (out / "model").is_dir():
        card.update(out / "model", **training_facts(cfg, trainer, result))
    m.write(out)
    return m


def training_facts(cfg: KadetConfig, trainer: Distiller, result: Mapping) -> dict:
    """What the model card says about training (see :mod:`kadet.card`)."""
    from collections import Counter

    labels = Manifest.read(Path(trainer.labels_path).parent) if (Path(trainer.labels_path).parent
                                                                  / "manifest.json").exists() else None
    corpus = (labels.inputs.get("corpus") or {}) if labels else {}
    teacher = labels.extra.get("teacher", cfg.label.teacher) if labels else cfg.label.teacher
    ensemble = labels.extra.get("ensemble") if labels else None
    hp = {k: v for k, v in dataclasses.asdict(cfg.distill).items() if k not in ("progress", "device")}
    return {"base_model": cfg.retrieval.model, "model_name": cfg.register.model_name, "mode": cfg.distill.mode,
            "corpus_fingerprint": corpus.get("fingerprint", "?"),
            "train_queries_by_type": dict(Counter(r["type"] for r in trainer.train_rows)),
            "dev_queries": len(trainer.dev_rows), "teacher": teacher,
            "teacher_detail": json.dumps(ensemble) if ensemble else "",
            "loss": f"{cfg.distill.loss} (listwise KL, teacher temperature {trainer.teacher_temp:g})",
            "best_epoch": result.get("best_epoch"), "best_dev_loss": result.get("best_dev_loss"),
            "hyperparameters": hp}
