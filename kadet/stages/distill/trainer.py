"""The distill loop: :class:`Distiller` holds the data, student, optimizer and schedule and runs
(or resumes) training; each optimizer step is one GradCache step over ``distill.batch_size``
queries (see the package docstring, :mod:`kadet.stages.distill`)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from kadet.core.config import KadetConfig
from kadet.stages.distill.checkpoint import (checkpoint_dir, checkpoint_key, latest_checkpoint, read_checkpoint, restore,
                                      write_checkpoint)
from kadet.stages.distill.data import Batch, TrainingData, chunked, epoch_order, make_batch
from kadet.stages.distill.optim import make_optimizer
from kadet.stages.distill.saving import save_model
from kadet.stages.distill.start import ChampionFinder, check_init_agrees, load_student, resolve_init
from kadet.stages.distill.temperature import calibrate_teacher_temp
from kadet.stages.distill.gradcache import Tower, grad_cache_step
from kadet.core.io import write_json
from kadet.stages.distill.losses import cosine_scores, distill_loss
from kadet.kit.encode import clip_text
from kadet.kit.models import resolve_device, resolve_model_path
from kadet.stages.distill.parallel import Ranks

log = logging.getLogger("kadet.distill")   # the stage's one logger: its name is in the log lines


def fresh_state() -> dict:
    """The loop's state before the first epoch (saved in every checkpoint)."""
    return {"epoch": 0, "step": 0, "best_dev": None, "best_epoch": None, "bad_epochs": 0,
            "curves": {"step": [], "train_loss": [], "lr": [], "epoch": [], "dev_loss": [], "epoch_train_loss": []}}


class Distiller:
    """The data (:attr:`data`), the student (:attr:`model`, started as :attr:`init` says), the
    optimizer and schedule; :meth:`train` runs or resumes training. ``settings`` is ``cfg.distill``."""

    def __init__(self, cfg: KadetConfig, labels_path: str | Path, output_dir: str | Path,
                 find_champion: ChampionFinder | None = None):
        self.cfg, self.settings = cfg, cfg.distill
        self.out = Path(output_dir)
        self.data = TrainingData.read(labels_path, self.settings.max_train_queries)
        device = resolve_device(self.settings.device)
        self.ranks = Ranks.from_env(device)
        self.device = self.ranks.device(device)
        torch.manual_seed(cfg.seed)
        self.base_path = resolve_model_path(cfg.retrieval.model)
        self.init = resolve_init(cfg, self.base_path, find_champion)
        check_init_agrees(self.init, self.ranks, self.device)
        self.model = load_student(self.init.path, self.device)
        self.dim = int(self.model.get_embedding_dimension())
        self.doc_emb = self._document_embeddings() if self.settings.mode == "query" else None
        self.checkpoint_key = checkpoint_key(cfg, labels_path, self.init.key)
        self.teacher_temp = self.settings.teacher_temp
        if self.settings.auto_teacher_temp:
            self.teacher_temp = self.calibrate_teacher_temp()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = math.ceil(len(self.train_rows) / self.settings.batch_size)
        self.opt, self.sched = make_optimizer(self.params, self.settings, self.steps_per_epoch)
        self.state = fresh_state()

    @property
    def train_rows(self) -> list[dict]:
        return self.data.train_rows

    @property
    def dev_rows(self) -> list[dict]:
        return self.data.dev_rows

    def _document_embeddings(self) -> torch.Tensor:
        """Query mode: every listed passage encoded once by the frozen base model (through the
        embedding cache), one row per :attr:`TrainingData.doc_index` entry; each rank encodes 1/N."""
        from kadet.kit.encode import Encoder

        cfg = self.cfg
        enc = Encoder(self.base_path, device=self.device,
                      cache_dir=cfg.cache_dir if cfg.retrieval.embedding_cache else None,
                      document_prompt=cfg.retrieval.passage_prompt)
        emb = enc.encode([self.data.doc_text[d] for d in self.ranks.share(list(self.data.doc_index))], kind="document")
        return self.ranks.gather(torch.from_numpy(emb).reshape(-1, self.dim).to(self.device))[0]

    @torch.no_grad()
    def calibrate_teacher_temp(self) -> float:
        """``distill.auto_teacher_temp`` (:mod:`kadet.stages.distill.temperature`) on up to 512 training
        lists of the untrained student."""
        self.model.eval()

        def lists():
            for rows in chunked(self.train_rows[:512], self.settings.batch_size):
                batch = self._batch(rows)
                q, p = self._encode_batch(batch)
                yield cosine_scores(q, p.view(len(batch), batch.list_size, -1)), batch.teacher

        return calibrate_teacher_temp(lists(), self.settings.student_temp, self.settings.teacher_temp)

    # ------------------------------------------------------------------ encoding
    def _autocast(self):
        if self.device.startswith("cuda") and self.settings.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        self.model.max_seq_length = max_len
        features = self.model.preprocess([clip_text(t, max_len) for t in texts])
        features = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in features.items()}
        with self._autocast():
            return self.model(features)["sentence_embedding"].float()

    def _batch(self, rows: list[dict]) -> Batch:
        return make_batch(rows, self.settings.list_size, self.data.doc_index, self.device)

    def _loss_fn(self, batch: Batch):
        s = self.settings
        kl, nce = (s.kl_weight, s.nce_weight) if s.loss == "listwise" else (0.0, 1.0)

        def fn(q, p):
            return distill_loss(q, p.view(len(batch), batch.list_size, -1), batch.teacher, batch.ids, kl_weight=kl,
                                nce_weight=nce, student_temp=s.student_temp, teacher_temp=self.teacher_temp,
                                nce_temp=s.nce_temp, fn_threshold=s.fn_threshold)

        return fn

    def _towers(self, batch: Batch) -> list[Tower]:
        """This rank's towers: its share of the batch's queries and lists (all of them when alone)."""
        s = self.settings
        q_texts, docs = self.ranks.share(batch.queries), self.ranks.share(batch.docs)
        query = Tower(lambda chunk: self._encode(chunk, s.query_max_len), chunked(q_texts, s.chunk_size),
                      dim=self.dim, device=self.device)
        flat = [d for lst in docs for d in lst]
        if s.mode == "query":  # frozen document tower: cached base-model embeddings
            idx = torch.tensor([self.data.doc_index[d] for d in flat], device=self.device)
            return [query, Tower(lambda i: self.doc_emb[i], [idx] if flat else [], trainable=False, dim=self.dim,
                                 device=self.device)]
        texts = [self.data.doc_text[d] for d in flat]
        return [query, Tower(lambda chunk: self._encode(chunk, s.passage_max_len), chunked(texts, s.chunk_size),
                             dim=self.dim, device=self.device)]

    def _encode_batch(self, batch: Batch) -> list[torch.Tensor]:
        """The whole batch's query and passage embeddings, without a graph (each rank encodes its share)."""
        return [self.ranks.gather(t.encode_all())[0] for t in self._towers(batch)]

    # ------------------------------------------------------------------ steps
    def train_step(self, rows: list[dict]) -> float:
        self.model.train()
        batch = self._batch(rows)
        loss = grad_cache_step(self._towers(batch), self._loss_fn(batch),
                               gather=self.ranks.gather if self.ranks.parallel else None)
        self.ranks.all_reduce_grads(self.params)
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
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
        for rows in chunked(self.dev_rows, self.settings.batch_size):
            batch = self._batch(rows)
            total += float(self._loss_fn(batch)(*self._encode_batch(batch))) * len(rows)
            n += len(rows)
        return total / n

    # ------------------------------------------------------------------ checkpoints (kadet.stages.distill.checkpoint)
    def _parts(self) -> dict:
        return {"model": self.model, "opt": self.opt, "sched": self.sched}

    def save_checkpoint(self) -> Path:
        """This epoch's checkpoint (rank 0 writes it)."""
        if not self.ranks.main:
            return checkpoint_dir(self.out, self.state["epoch"])
        return write_checkpoint(self.out, self.checkpoint_key, self._parts(), self.state)

    def resume(self) -> bool:
        """Continue from the newest checkpoint, unless it was made for another run (other settings,
        start or labels: then every checkpoint is removed and training starts over)."""
        path = latest_checkpoint(self.out)
        if path is None:
            return False
        blob = read_checkpoint(path, self.device)
        if blob.get("run_key") != self.checkpoint_key:
            log.warning("distill: %s was made with other settings or labels (key %s, now %s): starting over",
                        path, blob.get("run_key"), self.checkpoint_key)
            self.ranks.barrier()  # every rank has read it before rank 0 removes it
            if self.ranks.main:
                shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
            return False
        self.state = restore(blob, self._parts())
        log.info("resumed from %s", path)
        return True

    # ------------------------------------------------------------------ loop
    def train(self, max_epochs_this_run: int | None = None) -> dict:
        """Train until ``distill.epochs``, early stopping, or ``max_epochs_this_run`` epochs in this
        call; resumes from the last checkpoint first. Writes ``model/`` (best by dev loss),
        ``checkpoints/`` and ``curves.json``."""
        s = self.settings
        resumed = self.resume()
        run_epochs = 0
        t0 = time.perf_counter()
        while self.state["epoch"] < s.epochs and self.state["bad_epochs"] < s.patience:
            if max_epochs_this_run is not None and run_epochs >= max_epochs_this_run:
                break
            losses = self._train_epoch(self.state["epoch"])
            self._end_epoch(self.state["epoch"], losses)
            run_epochs += 1
        if self.ranks.main:
            write_json(self.out / "curves.json", self.state["curves"], indent=1)
        return {"epochs": self.state["epoch"], "best_epoch": self.state["best_epoch"],
                "best_dev_loss": self.state["best_dev"], "resumed": resumed,
                "seconds_this_run": round(time.perf_counter() - t0, 1),
                "stopped_early": self.state["bad_epochs"] >= s.patience}

    def _train_epoch(self, epoch: int) -> list[float]:
        """One pass over the training queries in this epoch's order; each step's loss and lr go to the curves."""
        from kadet.core.progress import bar as progress_bar

        order = epoch_order(len(self.train_rows), self.cfg.seed, epoch)
        losses = []
        bar = progress_bar(desc=f"distill epoch {epoch + 1}/{self.settings.epochs}",
                           show=self.settings.progress and self.ranks.main,
                           iterable=chunked(order, self.settings.batch_size))
        for picked in bar:
            loss = self.train_step([self.train_rows[i] for i in picked])
            losses.append(loss)
            c = self.state["curves"]
            c["step"].append(self.state["step"])
            c["train_loss"].append(loss)
            c["lr"].append(self.sched.get_last_lr()[0])
            self.state["step"] += 1
            bar.set_postfix(loss=f"{loss:.4f}")
        return losses

    def _end_epoch(self, epoch: int, losses: list[float]) -> None:
        """Dev loss, curves, the model if it is the best so far (else one more bad epoch), the checkpoint."""
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

    def save_model(self, path: Path) -> None:
        """Save a folder ``SentenceTransformer(path)`` loads (:mod:`kadet.stages.distill.saving`; an
        asymmetric Router in query mode). Rank 0 only (the weights are the same on every rank)."""
        if self.ranks.main:
            save_model(self.model, path, self.settings, self.init.path, self.base_path)
