"""The generate stage: run the requests not yet in the log, reuse the store, write ``queries.jsonl``."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from kadet.core.config import CleanConfig, KadetConfig
from kadet.kit.data import Document, normalise, read_corpus
from kadet.core.errors import KadetError
from kadet.stages.generate.backends import make_backend
from kadet.stages.generate.clean import clean_output
from kadet.stages.generate.extract import extract_queries
from kadet.stages.generate.requests import Request, plan_requests, unsharded
from kadet.core.io import write_jsonl
from kadet.core.journal import Journal, merge_logs, read_log
from kadet.core.manifest import Manifest
from kadet.llm.prompts import EXTRACTED_TYPES
from kadet.core.layout import STAGES, file_in
from kadet.core.reuse import Store

log = logging.getLogger(__name__)

LOG_NAME = STAGES["generate"].outputs["log"]
#: The settings a logged generation depends on (with the prompt, checked per record).
GENERATION_SETTINGS = ("backend", "model", "max_new_tokens", "passage_bias", "no_repeat_ngram_size",
                       "repetition_penalty", "max_copy_tokens", "temperature", "top_p")


def generation_depends(cfg: KadetConfig) -> dict:
    """What ``generations.jsonl`` records depend on; a change starts the log over."""
    g = cfg.generate
    d = {k: getattr(g, k) for k in GENERATION_SETTINGS} | {"seed": cfg.seed}
    if g.backend == "tgi":
        d |= {"tgi_url": g.tgi.url, "tgi_api": g.tgi.api}
    return d


def logged_output(done: Mapping[str, dict], req: Request) -> dict | None:
    """The logged record of ``req`` if it was generated from this very prompt."""
    rec = done.get(req.key)
    return rec if rec is not None and rec.get("prompt_sha") == req.prompt_sha else None


def run_generation(cfg: KadetConfig, passages: Sequence[Document], out: Path, backend=None) -> Manifest:
    """Generate for every planned request not yet in ``out/generations.jsonl``, then write the queries."""
    g = cfg.generate
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / LOG_NAME, generation_depends(cfg))
    requests = plan_requests(passages, g, cfg.seed)
    done = journal.resume()
    todo = [r for r in requests if logged_output(done, r) is None]
    store = Store.open(cfg.work_dir, "generate", generation_depends(cfg))
    todo, reused = reuse_stored(store, todo, journal)
    log.info("generate: %d requests, %d already done, %d from earlier runs, %d to do", len(requests),
             len(requests) - len(todo) - reused, reused, len(todo))
    rules = g.clean
    failed = 0
    t0 = time.perf_counter()
    if todo:
        backend = backend or make_backend(cfg)
        from kadet.core.progress import bar as progress_bar

        bar = progress_bar(len(todo), "generate", show=g.progress)
        for start in range(0, len(todo), g.flush_every):
            chunk = todo[start : start + g.flush_every]
            outputs = backend.generate(chunk)
            records = {}
            for req, raw in zip(chunk, outputs):
                if isinstance(raw, BaseException):
                    failed += 1  # not logged: a rerun retries it
                    continue
                text, reason = clean_output(raw, req.qtype, req.passage, rules)
                records[store_key(req)] = {
                    "key": req.key, "doc_id": req.doc_id, "type": req.qtype, "k": req.k, "raw": raw,
                    "text": text, "status": reason, "prompt_id": req.prompt_id, "prompt_sha": req.prompt_sha,
                    "backend": backend.name, "model": backend.model_name,
                }
            journal.append(list(records.values()))
            store.put(records)
            bar.update(len(chunk))
        bar.close()
    work = {"reused": reused, "generated": len(todo) - failed}
    return write_queries(cfg, requests, out, failed, time.perf_counter() - t0, passages, work)


def store_key(req: Request) -> str:
    """A generation's key in the store: its exact prompt (passage text, shots, template) and ``k``."""
    return f"{req.prompt_sha}|{req.k}"


def reuse_stored(store: Store, todo: Sequence[Request], journal: Journal) -> tuple[list[Request], int]:
    """Copy the outputs the store holds for ``todo`` (earlier runs, same prompt and settings) into
    this run's log; returns the requests still to generate and how many were reused."""
    stored = store.get(store_key(r) for r in todo)
    records = [{**stored[store_key(r)], "key": r.key, "doc_id": r.doc_id, "k": r.k} for r in todo
               if store_key(r) in stored]
    journal.append(records)
    return [r for r in todo if store_key(r) not in stored], len(records)


def _llm_queries(requests: Sequence[Request], done: Mapping[str, dict], rules: CleanConfig,
                 m: Manifest) -> Iterator[dict]:
    """``queries.jsonl`` rows of the logged outputs in plan order (stable whatever the completion
    order was), cleaned again from the raw output: the rules may have changed since generation.
    Each dropped output is counted in ``m`` by reason."""
    for req in requests:
        rec = logged_output(done, req)
        if rec is None:
            continue
        text, reason = clean_output(rec["raw"], req.qtype, req.passage, rules)
        if text is None:
            m.drop(reason)
            continue
        yield {"qid": f"gen-{rec['key'].replace('|', '-')}", "text": text, "type": rec["type"],
               "source_doc_id": rec["doc_id"], "backend": rec["backend"], "model": rec["model"],
               "prompt_id": rec["prompt_id"]}


def _extracted_queries(cfg: KadetConfig, passages: Sequence[Document]) -> Iterator[dict]:
    """The extracted (no LLM) queries of ``generate.types`` for this shard's ``passages``."""
    g = cfg.generate
    for kind in EXTRACTED_TYPES:
        if g.types.get(kind, 0) > 0:
            yield from extract_queries(passages, kind, cfg.seed, g.types[kind], (g.shard_index, g.num_shards))


def _unique(rows: Iterable[dict], seen: set[str], m: Manifest) -> list[dict]:
    """The ``rows`` whose normalised text is not in ``seen`` yet (added as they are kept); each
    other one is counted in ``m`` as a ``duplicate``."""
    kept = []
    for row in rows:
        norm = normalise(row["text"])
        if norm in seen:
            m.drop("duplicate")
            continue
        seen.add(norm)
        kept.append(row)
    return kept


def write_queries(cfg: KadetConfig, requests: Sequence[Request], out: Path, failed: int, seconds: float,
                  passages: Sequence[Document] = (), work: Mapping[str, int] | None = None) -> Manifest:
    """Write ``queries.jsonl`` (kept, de-duplicated) and the manifest from the generation log,
    then the extracted (``sentence``) queries of ``passages``. With requests not in the log yet,
    no ``queries.jsonl`` (a partial one is never published): the manifest says incomplete and
    KadetError is raised."""
    done = read_log(out / LOG_NAME)
    m = Manifest(stage="generate", config_hash=cfg.hash())
    seen: set[str] = set()
    rows = _unique(_llm_queries(requests, done, cfg.generate.clean, m), seen, m)
    llm_kept = len(rows)
    rows += _unique(_extracted_queries(cfg, passages), seen, m)
    missing = sum(1 for r in requests if logged_output(done, r) is None)
    if missing:  # the log keeps the finished work
        Path(file_in(out, "generate", "queries")).unlink(missing_ok=True)
        m.complete = False
        m.outputs = {"log": LOG_NAME}
    else:
        m.outputs = dict(STAGES["generate"].outputs)
        write_jsonl(file_in(out, "generate", "queries"), rows)
    finished = len(requests) - missing
    m.counts = {"requests": len(requests), "finished": finished, "kept": len(rows), "failed_this_run": failed,
                "missing": missing, **{f"kept_{t}": n for t, n in Counter(r["type"] for r in rows).items()},
                **(work or {})}
    m.extra = {"usable_fraction": round(llm_kept / finished, 4) if finished else 0.0,
               "seconds_this_run": round(seconds, 1), "backend": cfg.generate.backend, "types": cfg.generate.types}
    m.write(out)
    if missing:
        raise KadetError(f"generate: {missing} of {len(requests)} requests failed; rerun to resume "
                         f"({out / LOG_NAME} keeps the {finished} finished ones)")
    return m


def load_passages(cfg: KadetConfig, passages_path: str | Path) -> tuple[list[Document], Path]:
    """The passages to generate for (``generate.max_passages`` applied) and the local file."""
    from kadet.core.storage import localize

    local = localize(passages_path)
    passages = list(read_corpus(local).values())
    if cfg.generate.max_passages:
        passages = passages[: cfg.generate.max_passages]
    return passages, local


def generate(cfg: KadetConfig, passages_path: str | Path, output_dir: str | Path, backend=None) -> Manifest:
    """Run the stage on a ``passages.jsonl`` written by the prepare stage."""
    passages, local = load_passages(cfg, passages_path)
    m = run_generation(cfg, passages, Path(output_dir), backend)
    m.add_input("passages", passages_path, local)
    m.write(output_dir)
    return m


def merge_generation_shards(cfg: KadetConfig, passages_path: str | Path, shard_dirs: Sequence[str | Path],
                            output_dir: str | Path) -> Manifest:
    """Join the generation logs of ``generate.num_shards`` workers into one ``queries.jsonl``,
    exactly as one unsharded run writes it (plan order, global de-duplication)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    depends = generation_depends(cfg)
    journal = Journal(out / LOG_NAME, depends)
    merged = merge_logs((Journal(Path(d) / LOG_NAME, depends) for d in shard_dirs), into=journal.resume(),
                        refuse=lambda _, shard: f"generate merge: {shard.path} was generated with other settings "
                        f"than this merge's ({depends}); rerun the shards with the same configuration")
    journal.rewrite(merged.values())
    whole = unsharded(cfg)
    passages, local = load_passages(whole, passages_path)
    m = write_queries(whole, plan_requests(passages, whole.generate, whole.seed), out, 0, 0.0, passages)
    m.add_input("passages", passages_path, local)
    m.counts["shards"] = len(shard_dirs)
    m.write(out)
    return m
