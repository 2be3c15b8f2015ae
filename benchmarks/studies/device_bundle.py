"""Pack what :mod:`benchmarks.studies.device_check` needs into one git-ignored folder that travels
to a bare GPU machine (no registry, only the checkout plus carried paths, 64 MiB in all)::

    scripts/device-bundle.sh                                  # labels from a CPU run made here (slow)
    scripts/device-bundle.sh --labels .kadet/work/label/labels.jsonl   # the labels of a run you have

Writes ``device-bundle/`` (at most ``--limit-mib``, default 60 MiB)::

    model/                 the student (retrieval.model, default all-MiniLM-L6-v2) in float16 safetensors,
                           with its tokenizer and sentence-transformers modules (the check casts it back
                           to float32 before it trains)
    data/corpus.jsonl.gz   the BEIR corpus, queries and test judgements (default: the shared SciFact)
    data/queries.jsonl.gz
    data/qrels/test.tsv
    labels.jsonl.gz        the label stage's lists without passage texts: each passage is
                           ``[doc_id, score]`` (``[doc_id, score, text]`` where the text is not the
                           corpus's ``full_text``); the check puts the texts back from the corpus
    bundle.json            where each part came from, counts, sizes

Without ``--labels`` it makes them first: kadet's prepare, generate, mine and label stages
in-process on the local profile (CPU; SmolLM2 queries, the ensemble teacher), as
``benchmarks/studies/regimes.py`` does, into ``--work``. prepare excludes every passage the test
judgements name (METHOD.md), so the labels never see the evaluation's positives. No wheel is
packed: the check imports only torch, transformers (whose dependencies bring pyyaml and tqdm),
sentence-transformers, numpy and kadet's modules that need nothing more.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

from benchmarks.common import REPO  # noqa: E402

DEFAULT_OUT = REPO / "device-bundle"


def make_labels(data: Path, work: Path, overrides: list[str]) -> Path:
    """A CPU run of prepare -> generate -> mine -> label (local profile) on ``data``: its labels.jsonl."""
    from kadet.core.config import load_config, profile_config
    from kadet.stages.generate import generate
    from kadet.stages.label.stage import label
    from kadet.stages.mine import mine
    from kadet.stages.prepare import prepare

    labels = work / "label" / "labels.jsonl"
    if labels.exists():
        return labels
    cfg = load_config(None, [f"data.data_dir={data}", f"work_dir={work}", *overrides], base=profile_config("local"))
    prepare(cfg, work / "prepare")
    generate(cfg, work / "prepare" / "passages.jsonl", work / "generate")
    mine(cfg, work / "generate" / "queries.jsonl", work / "prepare" / "corpus.jsonl", work / "mine")
    label(cfg, work / "mine" / "candidates.jsonl", work / "prepare" / "corpus.jsonl", work / "label")
    return labels


def pack_labels(labels: Path, corpus: dict, separator: str, out: Path) -> dict:
    """``labels`` without the passage texts the corpus already holds, gzipped to ``out``."""
    n = {"train": 0, "dev": 0, "texts_kept": 0}
    with open(labels, encoding="utf-8") as src, gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as dst:
        for line in src:
            if not line.strip():
                continue
            row = json.loads(line)
            packed = []
            for p in row["passages"]:
                doc = corpus.get(p["doc_id"])
                same = doc is not None and doc.full_text(separator) == p["text"]
                packed.append([p["doc_id"], p["score"]] if same else [p["doc_id"], p["score"], p["text"]])
                n["texts_kept"] += not same
            row["passages"] = packed
            n[row["split"]] = n.get(row["split"], 0) + 1
            dst.write(json.dumps(row, ensure_ascii=False) + "\n")
    return n


def pack_model(name: str, out: Path) -> None:
    """The student as float16 safetensors (half the bytes; the check trains a float32 copy)."""
    from sentence_transformers import SentenceTransformer

    from kadet.kit.models import resolve_model_path

    st = SentenceTransformer(str(resolve_model_path(name)), device="cpu", local_files_only=True)
    st.half().save(str(out), safe_serialization=True)


def gzip_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, gzip.open(dst, "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)


def size_mib(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def bundle(out: Path, data: Path, labels: Path, model: str, separator: str = " ", limit_mib: float = 60.0) -> dict:
    """Write the bundle folder ``out`` (replacing it); returns what bundle.json says."""
    from kadet.kit.data import load_beir

    ds = load_beir(data, "test")
    if out.exists():
        shutil.rmtree(out)
    (out / "data" / "qrels").mkdir(parents=True)
    pack_model(model, out / "model")
    gzip_copy(Path(ds.files["corpus"]), out / "data" / "corpus.jsonl.gz")
    gzip_copy(Path(ds.files["queries"]), out / "data" / "queries.jsonl.gz")
    shutil.copy(ds.files["qrels"], out / "data" / "qrels" / "test.tsv")
    counts = pack_labels(labels, ds.corpus, separator, out / "labels.jsonl.gz")
    info = {"model": model, "dtype": "float16", "data": str(data), "labels": str(labels), "title_separator": separator,
            "documents": len(ds.corpus), "test_queries": len(ds.eval_queries()), "label_queries": counts}
    info["mib"] = round(size_mib(out), 1)
    (out / "bundle.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    if info["mib"] > limit_mib:
        raise SystemExit(f"{out} is {info['mib']} MiB, over the {limit_mib} MiB a device call may carry")
    return info


def main() -> None:
    from kadet.tools.datasets import find_scifact

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the bundle folder (git-ignored)")
    ap.add_argument("--data", type=Path, default=None, help="BEIR folder with qrels/test.tsv (default: shared SciFact)")
    ap.add_argument("--labels", type=Path, default=None, help="an existing labels.jsonl (default: make them here)")
    ap.add_argument("--work", type=Path, default=REPO / ".kadet" / "device-labels", help="the CPU label run's work dir")
    ap.add_argument("--set", action="append", default=[], help="override for the CPU label run (local profile)")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="the student (retrieval.model)")
    ap.add_argument("--limit-mib", type=float, default=60.0)
    args = ap.parse_args()
    data = args.data or find_scifact()
    labels = args.labels or make_labels(data, args.work, args.set)
    info = bundle(args.out, data, labels, args.model, limit_mib=args.limit_mib)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
