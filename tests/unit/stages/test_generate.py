"""Query generation: cleaning, planning, resume after a crash, the tgi client (against the
real llama.cpp server and a FAKE fault-injection server), and the local backend."""

from __future__ import annotations

import json
import logging

import pytest

from kadet.core.config import CleanConfig, load_config
from kadet.kit.data import Document, read_corpus, read_records
from kadet.core.errors import ConfigError, KadetError
from kadet.stages.generate import (
    LOG_NAME, TGIBackend, clean_output, generate, is_copy, plan_requests, run_generation,
)
from kadet.core.io import write_jsonl
from kadet.core.journal import read_log
from kadet.core.manifest import Manifest
from kadet.kit.models import smollm2_gguf
from kadet.llm.prompts import EXAMPLE_PASSAGES, QUERY_TYPES
from tests.doubles.servers import FaultServer, llama_cpp_available, llama_server

PASSAGE = ("The human Golli-MBP gene is included within a 179-kilobase transcription unit: expression in "
           "the immune and nervous systems of the myelin basic protein gene complex.")

HNRNP = ("hnRNP A1 associates with telomeres. hnRNP A1, which was previously implicated in telomere length "
         "regulation, binds to both single-stranded and structured human telomeric repeats.")

# Raw outputs observed from SmolLM2-135M on SciFact passages (kadet generate, local backend).
OBSERVED = [
    ("question", " What is the name of the gene in the human genome that encodes for myelin basic protein?\n", PASSAGE,
     "What is the name of the gene in the human genome that encodes for myelin basic protein?", "ok"),
    ("title", " A14933.1\n", PASSAGE, None, "too_short"),
    ("web", " The human Golli-MBP gene is included within a 179-kilobase transcription unit: expression in the im",
     PASSAGE, None, "copy_of_passage"),
    ("web", " s1017\n", PASSAGE, None, "too_short"),
    ("keywords", " human, RNA, gene expression, gene expression, gene expression, human, gene expression, gene express",
     PASSAGE, "human, RNA, gene expression, gene express", "ok"),
    ("web", " Select the best answer that fits the title of the article.  Answer:  The structure of the chromatin in "
            "the nucleus of the cell is a dynamic and highly specialised structure that allows the cell", PASSAGE,
     None, "too_long"),
    ("msmarco", " what is hnRNP A1\n", HNRNP, "what is hnRNP A1", "ok"),
    ("claim", " The most common cause of death in the United States is cancer.\n", PASSAGE, None, "off_topic"),
    ("claim", " The human Golli-MBP gene is expressed in the immune system. The human genome is a vast, complex, and "
              "dynamic structure that is the complete genetic blueprint of the human body. The human genetic code",
     PASSAGE, "The human Golli-MBP gene is expressed in the immune system.", "ok"),
    ("question", " Is myelin basic protein expressed in T cells? What about B cells and the gene complex of the "
                 "nervous system in the developing brain of mice", PASSAGE, "Is myelin basic protein expressed in T cells?",
     "ok"),
    ("msmarco", " what bacteria make antibiotics\n", HNRNP, None, "copied_example"),
    ("claim", " CFTR mutations impair chloride transport across cell membranes, which thickens mucus in the lungs and "
              "pancreas of people with cystic fibrosis.\n", PASSAGE, None, "copied_example"),
]


@pytest.mark.parametrize("qtype, raw, passage, expected, reason", OBSERVED)
def test_cleaning_on_observed_outputs(qtype, raw, passage, expected, reason):
    assert clean_output(raw, qtype, passage) == (expected, reason)


@pytest.mark.parametrize(
    "raw, expected, reason",
    [
        ('Query: "does aspirin prevent clots"\nPassage: next one', "does aspirin prevent clots", "ok"),
        ("\n\n  1. Question: **Is coffee good for the liver?**", "Is coffee good for the liver?", "ok"),
        ("“what causes gout”", "what causes gout", "ok"),
        ("I'm sorry, but I cannot help with that request.", None, "refusal"),
        ("As an AI language model I do not have opinions", None, "refusal"),
        ("   \n  ", None, "empty"),
        ('""', None, "empty"),
        ("Passage: The human Golli-MBP gene", None, "echoed_prompt"),
        ("what", None, "too_short"),
        ("What about the weather in Paris today?", None, "off_topic"),
        ("does vitamin d prevent fractures", None, "copied_example"),
    ],
)
def test_cleaning_rules(raw, expected, reason):
    passage = "Aspirin and blood clots after surgery; coffee and the liver; what causes gout in men."
    assert clean_output(raw, "question", passage) == (expected, reason)


def test_copy_detection_uses_ngrams():
    assert is_copy("expression in the immune and nervous systems of the myelin", PASSAGE, 8)
    assert not is_copy("expression in the immune system of mice", PASSAGE, 8)
    assert clean_output("a b c d e f g h i j", "question", "x", CleanConfig(max_words=5)) == (None, "too_long")


def test_prompt_library():
    assert set(QUERY_TYPES) == {"question", "claim", "keywords", "title", "web", "msmarco"}
    for qt in QUERY_TYPES.values():
        assert len(qt.examples) >= 8 and len(qt.examples) == len(EXAMPLE_PASSAGES)
    qt = QUERY_TYPES["claim"]
    prompt = qt.raw_prompt("New passage.", [0, 4, 9])
    assert prompt.count("Passage:") == 4 and prompt.endswith("Passage: New passage.\nClaim:")
    msgs = qt.chat_messages("New passage.", [1, 2, 3])
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert QUERY_TYPES["web"].raw_prompt("P", []).count("Passage:") == 1


def _docs(n: int) -> list[Document]:
    return [Document(f"d{i}", f"Passage number {i} about topic {i} and its properties.") for i in range(n)]


def test_plan_mixture_seeding_and_shards():
    cfg = load_config(None, ["generate.types={question: 1, claim: 2, title: 0.5, keywords: 0}"])
    reqs = plan_requests(_docs(40), cfg.generate, seed=1)
    by = {t: sum(r.qtype == t for r in reqs) for t in ("question", "claim", "title", "keywords")}
    assert by["question"] == 40 and by["claim"] == 80 and by["keywords"] == 0
    assert 10 <= by["title"] <= 30
    assert all(len(r.examples) == 3 and len(set(r.examples)) == 3 for r in reqs)
    assert len({r.key for r in reqs}) == len(reqs)
    again = plan_requests(_docs(40), cfg.generate, seed=1)
    assert [(r.key, r.examples) for r in again] == [(r.key, r.examples) for r in reqs]
    assert [r.examples for r in plan_requests(_docs(40), cfg.generate, seed=2)] != [r.examples for r in reqs]
    shards = []
    for i in range(3):
        c = load_config(None, ["generate.types={question: 1}", f"generate.shard_index={i}", "generate.num_shards=3"])
        shards.append({r.key for r in plan_requests(_docs(10), c.generate, 1)})
    assert set.union(*shards) == {f"d{i}|question|0" for i in range(10)} and sum(map(len, shards)) == 10
    with pytest.raises(ConfigError, match="unknown query type"):
        plan_requests(_docs(1), load_config(None, ["generate.types={poem: 1}"]).generate, 1)


class ScriptedBackend:
    """FAKE backend for fault injection: answers deterministically, crashes on call ``crash_on``."""

    name = "scripted"
    model_name = "scripted"

    def __init__(self, crash_on: int | None = None):
        self.calls = 0
        self.crash_on = crash_on
        self.seen: list[str] = []

    def generate(self, requests):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("injected crash")
        self.seen += [r.key for r in requests]
        return [f"which properties has topic {r.doc_id} for {r.qtype} {r.k}\n" for r in requests]


def test_crash_and_resume(tmp_path):
    cfg = load_config(None, ["generate.types={question: 1, claim: 1}", "generate.flush_every=4", "generate.progress=false"])
    docs = _docs(10)
    with pytest.raises(KeyboardInterrupt):
        run_generation(cfg, docs, tmp_path, ScriptedBackend(crash_on=3))
    first = read_log(tmp_path / LOG_NAME)
    assert len(first) == 8  # two flushed groups of 4 survived the crash
    # a torn half-line from a crash mid-write is cut off, not parsed
    with open(tmp_path / LOG_NAME, "a") as fh:
        fh.write('{"key": "d9|claim|0", "te')
    resumed = ScriptedBackend()
    m = run_generation(cfg, docs, tmp_path, resumed)
    assert len(resumed.seen) == 12 and not set(resumed.seen) & set(first)
    rows = [json.loads(l) for l in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert len(rows) == 20 == len({r["qid"] for r in rows}) and m.counts["kept"] == 20
    assert set(rows[0]) == {"qid", "text", "type", "source_doc_id", "backend", "model", "prompt_id"}
    # a third run has nothing left to do and changes nothing
    idle = ScriptedBackend()
    run_generation(cfg, docs, tmp_path, idle)
    assert idle.calls == 0
    assert [json.loads(l) for l in (tmp_path / "queries.jsonl").read_text().splitlines()] == rows


def test_duplicates_and_drops_are_counted(tmp_path):
    class Dupes(ScriptedBackend):
        def generate(self, requests):
            return ["same properties of the topic\n" if r.doc_id != "d0" else "I'm sorry, I cannot do that" for r in requests]

    cfg = load_config(None, ["generate.types={question: 1}", "generate.progress=false"])
    m = run_generation(cfg, _docs(4), tmp_path, Dupes())
    assert m.counts["kept"] == 1 and m.dropped == {"refusal": 1, "duplicate": 2}
    assert Manifest.read(tmp_path).dropped == m.dropped


# ------------------------------------------------------------------ tgi backend, FAKE fault server

def _tgi_cfg(url: str, *extra: str):
    return load_config(None, ["generate.backend=tgi", f"generate.tgi.url={url}", "generate.types={question: 1, claim: 1}",
                              "generate.tgi.timeout_s=1", "generate.tgi.backoff_s=0.01", "generate.progress=false",
                              "generate.flush_every=5", *extra])


def test_tgi_retries_5xx_hangs_and_malformed_json(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", "hf_sekrit_token_value")
    caplog.set_level(logging.DEBUG)
    with FaultServer(["503", "hang", "badjson", "502", "ok"], hang_s=2.5) as srv:
        cfg = _tgi_cfg(srv.url, "generate.tgi.max_retries=4", "generate.tgi.concurrency=4")
        backend = TGIBackend(cfg.generate)
        m = run_generation(cfg, _docs(6), tmp_path, backend)
    assert m.counts["kept"] == 12 and m.counts["missing"] == 0
    assert backend.stats["retries"] == 4 * 12 and backend.stats["calls"] == 5 * 12
    assert srv.auth == {"Bearer hf_sekrit_token_value"}  # the token is sent ...
    everything = caplog.text + repr(backend) + (tmp_path / LOG_NAME).read_text() + (tmp_path / "manifest.json").read_text()
    assert "sekrit" not in everything  # ... and never written anywhere


def test_tgi_gives_up_then_resumes_without_loss(tmp_path):
    # every request fails its first 3 attempts; with 1 retry all fail, nothing is written
    with FaultServer(["500", "500", "500"]) as srv:
        cfg = _tgi_cfg(srv.url, "generate.tgi.max_retries=1")
        with pytest.raises(KadetError, match=r"12 of 12 requests failed; rerun to resume"):
            run_generation(cfg, _docs(6), tmp_path, TGIBackend(cfg.generate))
        assert read_log(tmp_path / LOG_NAME) == {}
        cfg = _tgi_cfg(srv.url, "generate.tgi.max_retries=2")
        m = run_generation(cfg, _docs(6), tmp_path, TGIBackend(cfg.generate))
    assert m.counts["kept"] == 12 and m.counts["failed_this_run"] == 0


def test_a_bug_is_raised_not_retried_as_a_network_fault(tmp_path, monkeypatch):
    """Was: ``is_retryable`` (then ``_classify``) retried AttributeError/KeyError/TypeError as if the
    network failed, so a typo became max_retries calls and a silently "failed" request."""
    from kadet.stages.generate import Request, RetryableError, is_retryable

    assert not any(is_retryable(e) for e in (AttributeError("x"), KeyError("x"), TypeError("x"), ValueError("x")))
    assert is_retryable(RetryableError("malformed reply")) and is_retryable(TimeoutError())
    with FaultServer(["ok"]) as srv:
        cfg = _tgi_cfg(srv.url, "generate.tgi.max_retries=3")
        backend = TGIBackend(cfg.generate)

        def typo(self):
            return self.pasage  # the injected bug (fault injection)

        monkeypatch.setattr(Request, "chat_messages", typo)
        with pytest.raises(AttributeError, match="pasage"):
            run_generation(cfg, _docs(1), tmp_path, backend)
    assert backend.stats["retries"] == 0


def test_tgi_does_not_retry_4xx(tmp_path):
    with FaultServer(["400", "400", "400"]) as srv:
        cfg = _tgi_cfg(srv.url, "generate.tgi.max_retries=3")
        backend = TGIBackend(cfg.generate)
        with pytest.raises(KadetError):
            run_generation(cfg, _docs(2), tmp_path, backend)
    assert backend.stats["calls"] == 4 and backend.stats["retries"] == 0


# ------------------------------------------------------------------ real llama.cpp server

needs_llama = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python[server] not installed")


@pytest.fixture(scope="module")
def llama_url():
    with llama_server(str(smollm2_gguf())) as url:
        yield url


@needs_llama
def test_tgi_backend_against_real_llama_cpp_server(tmp_path, llama_url, scifact):
    corpus = read_corpus(scifact / "corpus.jsonl")
    passages = list(corpus.values())[:4]
    write_jsonl(tmp_path / "passages.jsonl", ({"_id": d.doc_id, "title": d.title, "text": d.text} for d in passages))
    cfg = _tgi_cfg(llama_url, "generate.tgi.timeout_s=120", "generate.tgi.concurrency=2", "generate.temperature=0.3",
                   "generate.types={question: 1, msmarco: 1}")
    m = generate(cfg, tmp_path / "passages.jsonl", tmp_path / "out")
    rows = [json.loads(l) for l in (tmp_path / "out" / "queries.jsonl").read_text().splitlines()]
    assert m.counts["finished"] == 8 and m.counts["missing"] == 0
    # SmolLM2-135M through its chat template often rambles (dropped as too_long); this test is
    # about the client plumbing, quality is measured on the local backend's raw prompts.
    assert len(rows) >= 2, m.dropped
    assert m.counts["kept"] + sum(m.dropped.values()) == 8
    for r in rows:
        assert r["backend"] == "tgi" and r["source_doc_id"] in corpus and r["text"]
        assert r["prompt_id"].startswith(r["type"] + "/v1/")
    raw = [rec["raw"] for rec in read_log(tmp_path / "out" / LOG_NAME).values()]
    assert all("\n" not in x.strip() for x in raw)  # the stop sequence was honoured


def test_tgi_text_generation_api_request_shape(tmp_path):
    # llama.cpp serves only the OpenAI routes, so TGI's raw route is checked against the FAKE
    # server: a POST of {"inputs": <few-shot prompt>, "parameters": {...}} to the base URL.
    with FaultServer(["503"]) as srv:
        cfg = _tgi_cfg(srv.url, "generate.tgi.api=text_generation", "generate.types={claim: 1}")
        m = run_generation(cfg, _docs(3), tmp_path, TGIBackend(cfg.generate))
    assert m.counts["kept"] == 3
    assert set(srv.paths) == {"/"}
    rows = [json.loads(l) for l in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert all(r["text"].startswith("what about number") for r in rows)


# ------------------------------------------------------------------ local backend (real model)

@pytest.mark.slow
def test_local_backend_generates_usable_queries(tmp_path, scifact, shared_work):
    corpus = read_corpus(scifact / "corpus.jsonl")
    passages = list(corpus.values())[:6]
    cfg = load_config(None, [f"work_dir={shared_work}", "generate.types={question: 1, msmarco: 1}",
                             "generate.progress=false"])
    m = run_generation(cfg, passages, tmp_path / "out")
    assert m.counts["finished"] == 12
    assert m.counts["kept"] >= 9, m.dropped
    rows = [json.loads(l) for l in (tmp_path / "out" / "queries.jsonl").read_text().splitlines()]
    assert {r["backend"] for r in rows} == {"local"} and {r["type"] for r in rows} == {"question", "msmarco"}


def test_sentence_queries_need_no_llm_and_follow_weight_and_shards(tmp_path):
    from kadet.stages.generate import extract_queries, extract_sentence

    docs = [Document(f"d{i}", title=f"Title {i}", text=f"First finding of study {i} was clear. Second result "
                                                          f"number {i} followed from the cohort data. Tiny.")
            for i in range(40)]
    cfg = load_config(None, ["generate.types={sentence: 1.0}", "generate.progress=false"])
    idle = ScriptedBackend()
    m = run_generation(cfg, docs, tmp_path, idle)
    rows = [json.loads(l) for l in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert idle.calls == 0 and len(rows) == 40 == m.counts["kept_sentence"]
    for r in rows:   # a whole sentence of its own passage, never the 1-word one
        doc = docs[int(r["source_doc_id"][1:])]
        assert r["type"] == "sentence" and r["text"] in doc.text and len(r["text"].split()) >= 4
    # a fraction is a probability per passage; shards split passages and add up to the whole
    half = extract_queries(docs, "sentence", 42, weight=0.5)
    assert 10 <= len(half) <= 30
    parts = [q for i in range(3) for q in extract_queries(docs, "sentence", 42, 0.5, (i, 3))]
    assert sorted(q["qid"] for q in parts) == sorted(q["qid"] for q in half)
    # more than one per passage: distinct sentences of it, the first the same as at weight 1
    one = {q["source_doc_id"]: q["text"] for q in extract_queries(docs, "sentence", 42)}
    many = extract_queries(docs, "sentence", 42, weight=1.5)
    by_doc: dict[str, list[str]] = {}
    for q in many:
        by_doc.setdefault(q["source_doc_id"], []).append(q["text"])
    assert len({q["qid"] for q in many}) == len(many) and 50 <= len(many) <= 75
    assert all(texts[0] == one[d] and len(set(texts)) == len(texts) <= 2 for d, texts in by_doc.items())
    assert [q["text"] for q in many] == [q["text"] for q in extract_queries(docs, "sentence", 42, weight=1.5)]
    # a passage with two usable sentences gives two queries however many are asked for
    assert len(extract_queries(docs[:1], "sentence", 42, weight=5)) == 2
    # no punctuation (NPL-like text): a span of the passage, never the whole passage
    flat = Document("n1", " ".join(f"word{i}" for i in range(50)))
    span = extract_sentence(flat, __import__("random").Random(0))
    assert span in flat.text and len(span.split()) == 16
    assert extract_sentence(Document("n2", "too short text"), __import__("random").Random(0)) is None


def test_llm_and_sentence_types_mix(tmp_path):
    cfg = load_config(None, ["generate.types={question: 1, sentence: 1}", "generate.progress=false"])
    docs = [Document(f"d{i}", f"Finding {i} about aspirin and the heart. Another statement {i} on blood clots.")
            for i in range(6)]
    backend = ScriptedBackend()
    m = run_generation(cfg, docs, tmp_path, backend)
    assert len(backend.seen) == 6 and {r.split("|")[1] for r in backend.seen} == {"question"}
    assert m.counts["kept_sentence"] == 6 and m.counts["requests"] == 6
    with pytest.raises(ConfigError, match="sentence"):
        run_generation(load_config(None, ["generate.types={sentences: 1}"]), docs, tmp_path / "x", ScriptedBackend())


def test_a_later_run_generates_only_for_new_or_changed_passages(tmp_path):
    """Run 1 on 40 passages, run 2 (another output folder, same work dir) on those 40 plus 10
    new ones and one edited: the backend sees only the 11 new prompts; the other 39 outputs come
    from the store. (The backend is the scripted fault-injection one: it counts requests.)"""
    cfg = load_config(None, ["generate.types={question: 1}", "generate.progress=false", f"work_dir={tmp_path}"])
    first = ScriptedBackend()
    m1 = run_generation(cfg, _docs(40), tmp_path / "run1", first)
    assert len(first.seen) == 40 and m1.counts["reused"] == 0 and m1.counts["generated"] == 40
    grown = _docs(50)
    grown[3] = Document("d3", "Passage number 3, now rewritten about another topic entirely.")
    second = ScriptedBackend()
    m2 = run_generation(cfg, grown, tmp_path / "run2", second)
    assert sorted(second.seen) == sorted(["d3|question|0", *(f"d{i}|question|0" for i in range(40, 50))])
    assert m2.counts["reused"] == 39 and m2.counts["generated"] == 11 and m2.counts["finished"] == 50
    # the reused outputs are the first run's, under this run's keys
    q1 = {r["qid"]: r["text"] for r in read_records(tmp_path / "run1" / "queries.jsonl", "qid", {"text": str})}
    q2 = {r["qid"]: r["text"] for r in read_records(tmp_path / "run2" / "queries.jsonl", "qid", {"text": str})}
    assert all(q2[q] == t for q, t in q1.items() if q != "gen-d3-question-0" and q in q2)
    # other generation settings: nothing reused
    hot = load_config(None, ["generate.types={question: 1}", "generate.progress=false", f"work_dir={tmp_path}",
                             "generate.temperature=1.2"])
    third = ScriptedBackend()
    assert run_generation(hot, grown, tmp_path / "run3", third).counts["reused"] == 0 and len(third.seen) == 50


def test_merged_shards_write_what_one_unsharded_run_writes(tmp_path):
    """Two shards, each in its own folder, merged (their logs joined through kadet.core.journal) give
    the queries.jsonl of one run over all passages; a shard generated with other settings is refused."""
    from kadet.stages.generate import merge_generation_shards

    passages = tmp_path / "passages.jsonl"
    write_jsonl(passages, (d.to_json() for d in _docs(9)))
    base = ["generate.types={question: 1, claim: 1, sentence: 1}", "generate.progress=false"]

    def cfg(name, *extra):
        return load_config(None, [*base, f"work_dir={tmp_path / 'work' / name}", *extra])

    single = generate(cfg("single"), passages, tmp_path / "single", ScriptedBackend())
    for i in range(2):
        generate(cfg(f"s{i}", f"generate.shard_index={i}", "generate.num_shards=2"), passages, tmp_path / f"s{i}",
                 ScriptedBackend())
    shards = [tmp_path / "s0", tmp_path / "s1"]
    merged = merge_generation_shards(cfg("merge", "generate.num_shards=2"), passages, shards, tmp_path / "merged")
    assert (tmp_path / "merged" / "queries.jsonl").read_text() == (tmp_path / "single" / "queries.jsonl").read_text()
    assert merged.counts["kept"] == single.counts["kept"] > 9 and merged.counts["shards"] == 2
    assert read_log(tmp_path / "merged" / LOG_NAME) == read_log(tmp_path / "single" / LOG_NAME)
    with pytest.raises(KadetError, match=r"s0/generations\.jsonl was generated with other settings"):
        merge_generation_shards(cfg("merge", "generate.num_shards=2", "generate.temperature=0.5"), passages, shards,
                                tmp_path / "hot")
