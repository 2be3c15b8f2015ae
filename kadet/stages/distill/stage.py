"""The distill stage: train (:class:`~kadet.stages.distill.trainer.Distiller`), then write the manifest
and the model card's training facts."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import kadet.stages.distill.card as card
from kadet.core.config import KadetConfig
from kadet.stages.distill.checkpoint import hyperparameters
from kadet.stages.distill.start import ChampionFinder
from kadet.stages.distill.trainer import Distiller
from kadet.core.manifest import Manifest


def distill(cfg: KadetConfig, labels_path: str | Path, output_dir: str | Path,
            max_epochs_this_run: int | None = None, find_champion: ChampionFinder | None = None) -> Manifest:
    """Run (or resume) training and write the manifest. ``find_champion``: how ``distill.init:
    champion`` finds the champion (the registry layer's :func:`kadet.registry.register.find_champion`;
    without it a champion start falls back to the base model and says so)."""
    out = Path(output_dir)
    m = Manifest(stage="distill", config_hash=cfg.hash())
    m.add_input("labels", labels_path)
    trainer = Distiller(cfg, labels_path, out, find_champion)
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
    """What the model card says about training (see :mod:`kadet.stages.distill.card`)."""
    labels_dir = Path(trainer.data.path).parent
    labels = Manifest.read(labels_dir) if (labels_dir / "manifest.json").exists() else None
    corpus = (labels.inputs.get("corpus") or {}) if labels else {}
    teacher = labels.extra.get("teacher", cfg.label.teacher) if labels else cfg.label.teacher
    ensemble = labels.extra.get("ensemble") if labels else None
    return {"base_model": cfg.retrieval.model, "model_name": cfg.register.model_name, "mode": cfg.distill.mode,
            "corpus_fingerprint": corpus.get("fingerprint", "?"),
            "train_queries_by_type": dict(Counter(r["type"] for r in trainer.train_rows)),
            "dev_queries": len(trainer.dev_rows), "teacher": teacher,
            "teacher_detail": json.dumps(ensemble) if ensemble else "",
            "loss": card.loss_text(cfg.distill, trainer.teacher_temp),
            "best_epoch": result.get("best_epoch"), "best_dev_loss": result.get("best_dev_loss"),
            "hyperparameters": hyperparameters(cfg.distill)}
