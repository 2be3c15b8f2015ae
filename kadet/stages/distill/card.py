"""The model card: ``README.md`` in the saved model folder, sentence-transformers' own card with
kadet's facts added.

``SentenceTransformer.save`` writes its generated card (architecture, usage); kadet then adds
to its YAML front matter (``base_model``, tags, ``model-index`` with the evaluation results) and
puts one section between ``<!-- kadet:start -->`` and ``<!-- kadet:end -->`` after the title:
base model and towers, corpus fingerprint, training data by query type, teacher, loss and
hyperparameters, evaluation (gold or silver) and the registry version. The card's facts are kept
as ``kadet_card.json`` beside it, so later steps add to them (distill writes the training part,
register the evaluation and version) and render the card again; the section is replaced whole,
so rendering twice gives the same file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kadet.core.io import read_json
from kadet.kit.comparison import SILVER_CAVEAT, Comparison, display, gain_text, kind_text, retriever_rows

CARD = "README.md"
FACTS = "kadet_card.json"
START, END = "<!-- kadet:start -->", "<!-- kadet:end -->"


def read_facts(model_dir: str | Path) -> dict:
    path = Path(model_dir) / FACTS
    return read_json(path) if path.exists() else {}


def update(model_dir: str | Path, **facts: Any) -> Path:
    """Merge ``facts`` into the folder's ``kadet_card.json`` and render its ``README.md``."""
    model_dir = Path(model_dir)
    merged = {**read_facts(model_dir), **facts}
    (model_dir / FACTS).write_text(json.dumps(merged, indent=1, sort_keys=True, default=str))
    path = model_dir / CARD
    path.write_text(render(merged, path.read_text() if path.exists() else ""))
    return path


def render(facts: Mapping[str, Any], st_card: str = "") -> str:
    """The card: ``st_card`` (sentence-transformers' generated one) with kadet's front matter and section."""
    meta, body = split_front_matter(st_card)
    body = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n*", "", body, flags=re.S)
    meta = {**meta, "library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity"}
    meta["tags"] = list(dict.fromkeys([*meta.get("tags", []), "sentence-transformers", "kadet", "domain-adaptation"]))
    base = facts.get("base_model")
    if base and "/" in str(base) and not str(base).startswith(("/", ".")):
        meta["base_model"] = str(base)                       # a hub id; a local path is not metadata
    ev = facts.get("evaluation")
    if ev:   # written by evaluation_facts, kind included
        meta["model-index"] = [{"name": facts.get("model_name", "kadet-embedding"), "results": [{
            "task": {"type": "information-retrieval", "name": "Information Retrieval"},
            "dataset": {"name": ev.get("data", "corpus"), "type": ev["kind"]},
            "metrics": [{"type": k, "value": round(float(v), 4), "name": f"{k} ({ev['kind']})"}
                        for k, v in ev.get("candidate", {}).items()]}]}]
    title = f"# {facts.get('model_name', 'kadet-embedding')}: an embedding model adapted to one corpus by kadet"
    lines = body.lstrip("\n").split("\n")
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    section = section_text(facts)
    return ("---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + title + "\n\n"
            + START + "\n" + section + END + "\n\n" + "\n".join(lines).lstrip("\n"))


def split_front_matter(text: str) -> tuple[dict, str]:
    m = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    if not m:
        return {}, text
    return (yaml.safe_load(m.group(1)) or {}), text[m.end():]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def evaluation_facts(comparison: Comparison, metrics) -> dict:
    """The card's evaluation facts from a comparison: kind, queries, the data digest, base and
    candidate (and every retriever) under the metrics' display names, the gain's interval.
    ``metrics``: :class:`kadet.core.config.EvaluationConfig` (which nDCG, Recall and MRR cut-offs)."""
    names = (metrics.ndcg, metrics.recall, metrics.mrr)

    def shown(figures: Mapping[str, float]) -> dict[str, float]:
        return {display(n): float(figures[n]) for n in names if n in figures}

    rets = {r: {who: shown(v[who]) for who in ("base", "candidate")}
            for r, v in comparison.retrievers.items() if r != "bm25"}
    if "bm25" in comparison.retrievers:
        rets["bm25"] = shown(comparison.retrievers["bm25"])
    gain = comparison.gain(metrics.ndcg)
    return {"kind": comparison.kind, "queries": comparison.queries, "data": comparison.eval_data,
            "base": shown(comparison.base), "candidate": shown(comparison.candidate),
            "gain_ci": {**gain, "metric": display(metrics.ndcg)} if gain else None,
            "retriever": comparison.retriever, "retrievers": rets}


def loss_text(distill, teacher_temp: float) -> str:
    """What training minimised, for the card: ``distill.loss`` and the terms it weighs
    (:func:`kadet.stages.distill.losses.distill_loss`). ``distill``: :class:`kadet.core.config.DistillConfig`;
    ``teacher_temp``: the temperature used (calibrated when ``auto_teacher_temp``)."""
    if distill.loss == "infonce":
        return (f"infonce (InfoNCE alone, temperature {distill.nce_temp:g}: the teacher's top passage as the "
                "positive, the other passages in the batch as negatives, likely false negatives masked)")
    kl = "" if distill.kl_weight == 1 else f"{distill.kl_weight:g} x "
    nce = f", plus {distill.nce_weight:g} x InfoNCE" if distill.nce_weight else ""
    return f"listwise ({kl}listwise KL, teacher temperature {teacher_temp:g}{nce})"


def section_text(f: Mapping[str, Any]) -> str:
    """kadet's part of the card, as Markdown."""
    s = [*intro_text(f), *training_text(f)]
    if f.get("evaluation"):
        s += evaluation_text(f["evaluation"])
    if f.get("lineage"):
        s += ["\n## Lineage\n", *(f"- {line}" for line in f["lineage"])]
    reg = f.get("registry")
    if reg:
        s += ["\n## Registry\n", f"MLflow registered model `{reg['name']}` version **{reg['version']}**"
              + (f"; gate: {reg['gate']}" if reg.get("gate") else "") + ".\n"]
    return "\n".join(x.rstrip("\n") + "\n" for x in s)


def intro_text(f: Mapping[str, Any]) -> list[str]:
    """Where the model comes from, how to load it and which tower was tuned."""
    mode = f.get("mode", "query")
    towers = ("Only the **query tower** was tuned: the model is a sentence-transformers `Router` whose "
              "`document` route is the unchanged base model, so document embeddings already computed with "
              "the base model stay valid. `encode()` and `encode_query()` give the tuned query embeddings; "
              "encode documents with `encode_document()` (the base model)." if mode == "query" else
              "Both towers were tuned (one shared encoder): re-encode your documents with this model.")
    return [f"Adapted by kadet from **{f.get('base_model', '?')}** to one corpus "
            f"(fingerprint of the prepared corpus: `{f.get('corpus_fingerprint', '?')}`), "
            "with synthetic queries, mined candidates and a teacher's listwise scores (CADET-style distillation).\n",
            "## How to load\n",
            "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
            "model = SentenceTransformer(\"path/to/this/folder\")  # or mlflow.sentence_transformers.load_model("
            f"\"models:/{f.get('model_name', 'kadet-embedding')}@champion\")\n"
            "q = model.encode_query([\"which genes regulate ...\"])\nd = model.encode_document([\"passage text\"])\n"
            "scores = model.similarity(q, d)\n```\n", towers + "\n"]


def training_text(f: Mapping[str, Any]) -> list[str]:
    """Training data by query type, the teacher, the loss and the hyperparameters."""
    s = []
    by_type = f.get("train_queries_by_type") or {}
    if by_type:
        s += ["## Training data\n", _table(["query type", "training queries"],
                                           [[t, n] for t, n in sorted(by_type.items())]
                                           + [["**all**", sum(by_type.values())]])]
        if f.get("dev_queries") is not None:
            s.append(f"\n{f['dev_queries']} more queries were held out as the dev set (early stopping).\n")
    if f.get("teacher"):
        s.append(f"\nTeacher: `{f['teacher']}`" + (f" ({f['teacher_detail']})" if f.get("teacher_detail") else "")
                 + ".\n")
    hp = f.get("hyperparameters") or {}
    if hp:
        dev = f.get("best_dev_loss")
        s += ["\n## Training\n", f"Loss: {f.get('loss', '?')}; best epoch {f.get('best_epoch', '?')}"
              + (f" (dev loss {dev:.4f})" if isinstance(dev, (int, float)) else "") + ".\n\n",
              _table(["hyperparameter", "value"], [[k, f"`{v}`"] for k, v in sorted(hp.items())])]
    return s


def evaluation_text(ev: Mapping[str, Any]) -> list[str]:
    """Base vs candidate (:func:`evaluation_facts`): gold or silver, every retriever, the gain's interval."""
    kind = ev["kind"]
    s = ["\n## Evaluation\n", *([f"**{SILVER_CAVEAT}**\n\n"] if kind == "silver" else []),
         f"On {ev.get('queries', '?')} {kind_text(kind)} (**{kind}**); same run, same data for both models.\n\n",
         _table(["model", *ev.get("candidate", {}).keys()],
                [[name, *(f"{v:.4f}" for v in ev.get(name, {}).values())] for name in ("base", "candidate")])]
    rets = ev.get("retrievers") or {}
    if rets:
        cols = list(ev.get("candidate", {}).keys())
        s += [f"\nBy retriever (the gate judged **{ev['retriever']}**):\n\n",
              _table(["retriever", *cols], retriever_rows(rets, cols))]
    ci = ev.get("gain_ci")
    if ci:
        s.append(f"\n{gain_text(ci, ci['metric'])}.\n")
    return s
