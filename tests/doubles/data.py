"""Test data built on the fly: small BEIR folders, real slices of the shared SciFact copy, and a
tiny randomly initialised sentence-transformers model (plumbing only).

Used by tests/conftest.py's fixtures, by tests directly and by benchmarks/ (which import it from
here: tests never import benchmarks). Finding the shared data is the library's
(:func:`kadet.tools.datasets.find_scifact`).
"""

from __future__ import annotations

import json
from pathlib import Path

from kadet.tools.datasets import find_scifact


def write_beir(root: Path, docs: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]],
               split: str = "test") -> Path:
    """Write a small BEIR folder for tests."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels), encoding="utf-8"
    )
    return root


def scifact_slice(root: Path, n_queries: int = 20, n_docs: int = 300, seed: int = 0) -> Path:
    """A small real BEIR folder cut from SciFact: the first ``n_queries`` judged test queries,
    their relevant documents, and random other documents up to ``n_docs``."""
    import random

    src = find_scifact()
    docs = {d["_id"]: d for d in map(json.loads, (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines())}
    queries = {q["_id"]: q for q in map(json.loads, (src / "queries.jsonl").read_text(encoding="utf-8").splitlines())}
    rows = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    qids = list(dict.fromkeys(r[0] for r in rows))[:n_queries]
    qrels = [(q, d, int(s)) for q, d, s in rows if q in qids]
    keep = list(dict.fromkeys(d for _, d, _ in qrels))
    others = sorted(set(docs) - set(keep))
    keep += random.Random(seed).sample(others, max(0, n_docs - len(keep)))
    return write_beir(root, [docs[d] for d in keep], [queries[q] for q in qids], qrels)


def make_tiny_st(root: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised sentence-transformers model (plumbing only), saved to ``root/st``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kadet.kit.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    t = models.Transformer(str(root / "bert"), max_seq_length=64)
    st = SentenceTransformer(modules=[t, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(root / "st"))
    return root / "st"
