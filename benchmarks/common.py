"""Real data for benchmarks and tests: where the shared BEIR data lives, and small real slices.

Used by ``benchmarks/*.py`` and by ``tests/conftest.py`` (which re-exports these names), so
neither imports the other's internals.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path | None:
    """``$KADET_SHARED_DATA``, else the first ``shared/data`` beside the repo or a parent, else /work/shared/data."""
    env = os.environ.get("KADET_SHARED_DATA")
    if env:
        return Path(env)
    for parent in [REPO, *REPO.parents]:
        cand = parent.parent / "shared" / "data" if parent == REPO else parent / "shared" / "data"
        if (cand / "beir").is_dir():
            return cand
    fallback = Path("/work/shared/data")
    return fallback if fallback.is_dir() else None


def find_scifact() -> Path:
    root = find_shared_data()
    if root is None or not (root / "beir" / "scifact" / "corpus.jsonl").exists():
        raise FileNotFoundError("BEIR SciFact not found: set KADET_SHARED_DATA to the shared/data folder")
    return root / "beir" / "scifact"


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


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def headless_chrome(width: int = 1100, height: int = 900):
    """Debian's chromium, headless, driven by selenium through Debian's chromedriver (an explicit
    driver path: selenium never downloads one). Used by tests/test_judge.py and benchmarks/judged_gate.py."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


def machine() -> str:
    """The machine a benchmark row was measured on."""
    return f"{platform.node()} {os.cpu_count()} cpu"


def timed(seconds: dict[str, float], stage: str, fn, *args):
    """``fn(*args)``, its wall seconds recorded as ``seconds[stage]``."""
    t0 = time.perf_counter()
    result = fn(*args)
    seconds[stage] = round(time.perf_counter() - t0, 1)
    return result
