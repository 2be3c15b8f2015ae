"""kadet judge: pooling, query choice, the answer log, the paired-test status, export, the CLI,
and the page itself in a real headless chromium driven with the keyboard."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from kadet.core.config import KadetConfig
from kadet.core.errors import DataError, KadetError
from kadet.tools.judge import (JUDGEMENTS_FILE, POOL_FILE, JudgeSettings, Judgements, Pool, PoolQuery, Session,
                         disagreement, export, judge_status, load_corpus, make_server, open_session, pool_docs,
                         read_judgements, read_user_queries, select_queries, url_of)

from tests.doubles.browser import CHROMEDRIVER, CHROMIUM


def _cfg(tmp_path: Path) -> KadetConfig:
    cfg = KadetConfig()
    cfg.work_dir = str(tmp_path / "work")
    return cfg


# ---------------------------------------------------------------- pooling and query choice


def test_disagreement_is_one_minus_top10_overlap():
    a = [f"d{i}" for i in range(10)]
    assert disagreement(a, a) == 0.0
    assert disagreement(a, [f"x{i}" for i in range(10)]) == 1.0
    assert disagreement(a, a[:7] + ["x", "y", "z"]) == pytest.approx(0.3)


def test_select_queries_takes_most_disagreement_then_a_random_share():
    scores = {f"q{i}": i / 100 for i in range(100)}   # q99 disagrees most
    picked = select_queries(scores, 20, 0.3, seed=1)
    assert len(picked) == 20
    by = {kind: [q for q, k in picked.items() if k == kind] for kind in ("disagreement", "random")}
    assert sorted(by["disagreement"]) == sorted(f"q{i}" for i in range(86, 100))   # the 14 highest
    assert len(by["random"]) == 6 and all(int(q[1:]) < 86 for q in by["random"])
    assert picked == select_queries(scores, 20, 0.3, seed=1)                       # seeded
    assert list(picked) != sorted(picked, key=lambda q: -scores[q])                # judged in a mixed order
    assert set(select_queries(scores, 500, 0.3, seed=1)) == set(scores)            # never more than there are
    assert set(select_queries(scores, 10, 0.0, seed=1).values()) == {"disagreement"}
    ties = {f"q{i}": 1.0 for i in range(50)}
    assert select_queries(ties, 5, 0.0, seed=1) != select_queries(ties, 5, 0.0, seed=2)   # ties: seeded shuffle


def test_pool_docs_merges_dedupes_and_shuffles_per_query():
    runs = {"base": ["a", "b", "c", "d"], "candidate": ["b", "e", "f"], "bm25": ["a", "g"]}
    docs, sources = pool_docs(runs, 2, seed=3, qid="q1")
    assert sorted(docs) == ["a", "b", "e", "g"]
    assert sources == {"a": ["base", "bm25"], "b": ["base", "candidate"], "e": ["candidate"], "g": ["bm25"]}
    assert docs == pool_docs(runs, 2, seed=3, qid="q1")[0]
    orders = {tuple(pool_docs(runs, 2, seed=3, qid=f"q{i}")[0]) for i in range(20)}
    assert len(orders) > 1   # the order depends on the query, so it cannot reveal a system


def test_read_user_queries_txt_and_jsonl(tmp_path, tiny_beir):
    txt = tmp_path / "q.txt"
    txt.write_text("first query\n\n  second query \n", encoding="utf-8")
    assert read_user_queries(txt) == {"q1": "first query", "q2": "second query"}
    assert read_user_queries(tiny_beir / "queries.jsonl")["q2"] == "vitamin d and fractures"
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no queries"):
        read_user_queries(tmp_path / "empty.txt")


def test_pool_is_built_once_stored_and_resumed(tmp_path, tiny_beir, tiny_st, monkeypatch):
    import kadet.tools.judge as judge

    cfg, out = _cfg(tmp_path), tmp_path / "out"
    s = JudgeSettings(base=str(tiny_st), candidate=str(tiny_st), depth=2, max_queries=2, random_share=0.5)
    session = open_session(cfg, tiny_beir, tiny_beir / "queries.jsonl", out, s)
    stored = json.loads((out / POOL_FILE).read_text())
    assert stored["settings"]["depth"] == 2 and stored["settings"]["candidate"] == str(tiny_st.resolve())
    assert [q["pick"] for q in stored["queries"]].count("random") == 1
    for q in session.pool.queries:
        assert 2 <= len(q.docs) <= 4 and len(set(q.docs)) == len(q.docs)
        assert set(session.pool.sources[q.qid]) == set(q.docs)
        assert q.disagreement == 0.0   # the same model twice

    monkeypatch.setattr(judge, "build_pool", lambda *a: pytest.fail("a rerun must resume the stored pool"))
    again = open_session(cfg, tiny_beir, tiny_beir / "queries.jsonl", out, s)
    assert [q.docs for q in again.pool.queries] == [q.docs for q in session.pool.queries]
    with pytest.raises(KadetError, match=r"other settings \(depth changed"):
        open_session(cfg, tiny_beir, tiny_beir / "queries.jsonl", out,
                     JudgeSettings(base=str(tiny_st), candidate=str(tiny_st), depth=3, max_queries=2,
                                   random_share=0.5))


# ---------------------------------------------------------------- answers, status, export


def _pool(n: int, docs: list[str], better: str = "candidate") -> Pool:
    """``n`` queries over ``docs``; ``better`` ranks doc 0 (the one judged relevant) first, the other
    system ranks it last."""
    good = {d: 1.0 - i / 10 for i, d in enumerate(docs)}
    bad = {d: 1.0 - i / 10 for i, d in enumerate(reversed(docs))}
    qs = [PoolQuery(f"q{i}", f"query {i}", "random" if i % 3 == 0 else "disagreement", 1.0, list(docs))
          for i in range(1, n + 1)]
    runs = {"base": {q.qid: bad if better == "candidate" else good for q in qs},
            "candidate": {q.qid: good if better == "candidate" else bad for q in qs}}
    return Pool(settings={}, queries=qs, runs=runs)


def _session(tmp_path: Path, data: Path, pool: Pool, export_to: Path | None = None) -> Session:
    return Session(pool=pool, corpus=load_corpus(data).corpus, judgements=Judgements(tmp_path / JUDGEMENTS_FILE),
                   data_dir=data, export_to=export_to or data)


def test_judgements_log_last_answer_wins_and_bad_lines_are_named(tmp_path):
    j = Judgements(tmp_path / "j.jsonl")
    j.add("q1", "d1", 2)
    j.add("q1", "d2", 0)
    j.add("q1", "d1", 1)
    assert read_judgements(j.path) == {"q1": {"d1": 1, "d2": 0}}
    with open(j.path, "a", encoding="utf-8") as fh:
        fh.write('{"qid": "q1", "doc_id": "d3", "gra')   # a crash mid-write
    assert read_judgements(j.path) == {"q1": {"d1": 1, "d2": 0}}
    j.path.write_text('{"qid": "q1", "doc_id": "d1", "grade": 2}\n{"qid": "q1", "doc_id": "d2", "grade": 5}\n')
    with pytest.raises(DataError, match=r"j\.jsonl:2: field 'grade': grade must be one of"):
        read_judgements(j.path)
    j.path.write_text('{"qid": "q1", "grade": 2}\n')
    with pytest.raises(DataError, match=r"j\.jsonl:1: field 'doc_id'"):
        read_judgements(j.path)


def test_status_decides_only_with_enough_queries_and_stays_blind(tmp_path, tiny_beir):
    docs = ["d1", "d2", "d3", "d4"]
    pool = _pool(12, docs)
    grades = {}
    for i, q in enumerate(pool.queries[:4]):
        grades[q.qid] = {"d1": 2, "d2": 0, "d3": 0, "d4": 0}
    few = judge_status(pool, grades, confidence=0.9)
    assert few.done == 4 and not few.decides and few.base < few.candidate
    assert few.judged == 16 and few.passages == 48
    grades[pool.queries[4].qid] = {"d1": 2}       # incomplete: not counted
    assert judge_status(pool, grades).done == 4
    for q in pool.queries:
        grades[q.qid] = {"d1": 2, "d2": 0, "d3": 1 if q.qid == "q2" else 0, "d4": 0}
    many = judge_status(pool, grades, confidence=0.9)
    assert many.done == 12 and many.decides and many.ci[0] > 0
    assert "enough to decide" in many.message()
    public = many.public()
    assert set(public) == {"done", "total", "judged", "passages", "decides", "message"}
    for word in ("base", "candidate", "ndcg", "ahead", "better"):
        assert word not in json.dumps(public).lower()
    # equal systems never decide; the page says more are needed, not who leads
    tie = _pool(12, docs)
    tie.runs["base"] = tie.runs["candidate"]
    even = judge_status(tie, grades)
    assert not even.decides and "score the same" in even.message()
    for word in ("base", "candidate", "ahead", "better"):
        assert word not in json.dumps(even.public()).lower()


def test_export_writes_beir_merges_queries_and_refuses_to_overwrite(tmp_path, tiny_beir):
    from kadet.kit.data import load_beir

    pool = _pool(3, ["d1", "d2", "d3", "d4"])
    pool.queries[0].text = "does aspirin prevent heart attacks"    # the same id and text as tiny_beir's q1
    session = _session(tmp_path, tiny_beir, pool)
    with pytest.raises(KadetError, match="no completely judged query"):
        export(session)
    for q in pool.queries[:2]:
        for d, g in zip(q.docs, (2, 1, 0, 0)):
            session.judgements.add(q.qid, d, g)
    session.judgements.add("q3", "d1", 2)                          # q3 incomplete: not exported
    with pytest.raises(DataError, match=r"qrels/test\.tsv: exists; pass --force"):
        export(session)
    # the same id with other text: an error naming file, line and field
    pool.queries[1].qid = "q2"
    with pytest.raises(DataError, match=r"queries\.jsonl:2: field 'text': query 'q2' exists with other text"):
        export(session, force=True)
    pool.queries[1].qid = "u2"
    session.judgements.grades["u2"] = session.judgements.grades.pop("q2")
    before = (tiny_beir / "queries.jsonl").read_text()
    result = export(session, force=True)
    assert (result.queries, result.new_queries, result.qrels_rows) == (2, 1, 8)
    after = (tiny_beir / "queries.jsonl").read_text()
    assert after.startswith(before) and json.loads(after.splitlines()[-1])["_id"] == "u2"
    assert (tiny_beir / "qrels" / "test.tsv").read_text().splitlines()[:3] == [
        "query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td2\t1"]
    ds = load_beir(tiny_beir, "test")
    assert ds.qrels == {"q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 0}, "u2": {"d1": 2, "d2": 1, "d3": 0, "d4": 0}}
    assert "paired bootstrap" in result.summary() and "base 0." in result.summary()

    # a fresh folder gets the corpus copied, so `kadet evaluate/run --data` works on it
    fresh = export(session, export_to=tmp_path / "fresh")
    assert (tmp_path / "fresh" / "corpus.jsonl").read_text() == (tiny_beir / "corpus.jsonl").read_text()
    assert fresh.new_queries == 2


# ---------------------------------------------------------------- the command line


def test_cli_export_from_prewritten_judgements(tmp_path, tiny_beir, tiny_st, capsys):
    from kadet.cli import main

    queries = tmp_path / "logs.txt"
    queries.write_text("aspirin and heart attack\nbones and vitamin d\ncoffee and the liver\n", encoding="utf-8")
    out, exp = tmp_path / "judge", tmp_path / "exported"
    assert main(["judge", "--data", str(tiny_beir), "--queries", str(queries), "--model", str(tiny_st), "--out",
                 str(out), "--work-dir", str(tmp_path / "work"), "--export"]) == 2       # nothing judged yet
    assert "nothing judged in" in capsys.readouterr().err and not out.exists()
    # a 4-passage corpus and depth 10: every query's pool is the whole corpus
    rel = {"q1": "d1", "q2": "d2", "q3": "d4"}
    out.mkdir()
    (out / JUDGEMENTS_FILE).write_text("".join(
        json.dumps({"qid": q, "doc_id": d, "grade": 2 if d == rel[q] else 0}) + "\n"
        for q in ("q1", "q2", "q3") for d in ("d1", "d2", "d3", "d4")), encoding="utf-8")
    argv = ["judge", "--data", str(tiny_beir), "--queries", str(queries), "--model", str(tiny_st),
            "--out", str(out), "--work-dir", str(tmp_path / "work"), "--no-browser", "--export",
            "--export-to", str(exp)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "exported 3 judged queries" in text and "nDCG@10 base" in text and "interval" in text
    assert "not yet" in text   # 3 queries never decide
    assert (exp / "qrels" / "test.tsv").read_text().count("\t2\n") == 3
    assert main(argv) == 2     # the qrels exist now
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert main(argv[:-2] + ["--max-queries", "2"]) == 2   # other settings than the stored pool
    assert "other settings (max_queries changed" in capsys.readouterr().err


# ---------------------------------------------------------------- the server, without a browser


def _request(server, method: str, path: str, body=None, headers=None):
    import http.client

    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def test_the_server_answers_its_routes_and_refuses_other_sites(tmp_path, tiny_beir):
    """Each route's answer; no answer without the CSRF header or to another Host (DNS rebinding);
    an answer is saved before the reply; an export from the page calls ``on_export``."""
    pool = _pool(2, ["d1", "d2"])
    session = _session(tmp_path, tiny_beir, pool, export_to=tmp_path / "exported")
    exported = []
    server = make_server(session, on_export=exported.append)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ok = {"X-Kadet-Judge": "1", "Content-Type": "application/json"}
    try:
        status, ctype, page = _request(server, "GET", "/")
        assert status == 200 and ctype.startswith("text/html") and page.startswith(b"<!")
        status, _, state = _request(server, "GET", "/api/state")
        assert status == 200 and [q["qid"] for q in json.loads(state)["queries"]] == ["q1", "q2"]
        assert _request(server, "GET", "/api/state", headers={"Host": "evil.example"})[0] == 403
        assert _request(server, "GET", "/nowhere")[0] == 404
        judge = {"qid": "q1", "doc_id": "d1", "grade": 2}
        assert _request(server, "POST", "/api/judge", judge)[0] == 403                   # no CSRF header
        assert _request(server, "POST", "/api/judge", b"not json", ok)[0] == 400
        assert _request(server, "POST", "/api/judge", {**judge, "grade": 5}, ok)[0] == 400
        assert _request(server, "POST", "/api/judge", {**judge, "doc_id": "d9"}, ok)[0] == 400
        assert _request(server, "POST", "/api/nowhere", {}, ok)[0] == 404
        assert _request(server, "POST", "/api/export", {}, ok)[0] == 409                 # nothing judged yet
        status, _, body = _request(server, "POST", "/api/judge", judge, ok)
        assert status == 200 and json.loads(body)["ok"] and read_judgements(session.judgements.path)["q1"] == {"d1": 2}
        _request(server, "POST", "/api/judge", {**judge, "doc_id": "d2", "grade": 0}, ok)
        status, _, body = _request(server, "POST", "/api/export", {}, ok)
        assert status == 200 and "exported 1 judged queries" in json.loads(body)["message"]
        assert [r.queries for r in exported] == [1] and (tmp_path / "exported" / "qrels" / "test.tsv").exists()
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- the page, in a real browser


def _chrome():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e .[dev])")
    from selenium.common.exceptions import WebDriverException

    from tests.doubles.browser import headless_chrome

    try:
        return headless_chrome()
    except WebDriverException as exc:
        pytest.skip(f"chromium could not be started: {exc.msg}")


class _Page:
    """The judging page in chromium, graded with the keyboard as a person would."""

    def __init__(self, driver, session: Session, truth: dict):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.session, self.truth, self.by = driver, session, truth, By
        self.wait = WebDriverWait(driver, 20)

    def text(self, element_id: str) -> str:
        return self.driver.find_element(self.by.ID, element_id).text

    def ready(self):
        self.wait.until(lambda d: d.find_element(self.by.TAG_NAME, "body").get_attribute("data-ready") == "1")

    def saved(self):
        self.wait.until(lambda d: d.find_element(self.by.ID, "saved").text == "all answers saved")

    def press(self, *keys):
        body = self.driver.find_element(self.by.TAG_NAME, "body")
        for k in keys:
            body.send_keys(k)

    def passages(self) -> dict:
        """The shown passages and their grades (None: not judged), in page order."""
        return {c.get_attribute("data-doc"): c.get_attribute("data-grade")
                for c in self.driver.find_elements(self.by.CSS_SELECTOR, ".passage")}

    def judge_current_query(self):
        """Grade each passage in order with the keyboard: 2 (or r) for SciFact's relevant ones, else n."""
        qid = self.session.pool.queries[int(self.driver.execute_script("return S.qi"))].qid
        docs = list(self.passages())
        self.press(*["k"] * len(docs))   # to the top
        for i, doc in enumerate(docs):
            self.press(("2" if i % 2 else "r") if self.truth.get(qid, {}).get(doc, 0) > 0 else "n")
        self.saved()
        return qid, len(docs)


@pytest.mark.slow
def test_page_judged_with_the_keyboard_resumes_and_exports(tmp_path, tiny_st, scifact):
    from tests.doubles.data import scifact_slice
    from kadet.kit.data import load_beir

    data = scifact_slice(tmp_path / "scifact", n_queries=12, n_docs=200)
    truth = load_beir(data, "test").qrels
    cfg = _cfg(tmp_path)
    s = JudgeSettings(base="all-MiniLM-L6-v2", candidate=str(tiny_st), depth=3, max_queries=4)
    session = open_session(cfg, data, data / "queries.jsonl", tmp_path / "out", s, export_to=tmp_path / "exp")
    exported: list = []
    server = make_server(session, on_export=exported.append)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = _Page(_chrome(), session, truth)
    try:
        q2 = _judge_on_the_page(page, url_of(server), tiny_st, tmp_path)
    finally:
        page.driver.quit()
        server.shutdown()
        server.server_close()
    _check_the_export(cfg, tmp_path, session, truth, q2, exported, tiny_st)


def _judge_on_the_page(page: _Page, url: str, tiny_st, tmp_path) -> PoolQuery:
    """Blind page; one query judged, half of the next, a reload resumes there; the rest; export.
    Returns the query that was half judged before the reload."""
    from selenium.webdriver.common.keys import Keys

    session = page.session
    page.driver.get(url)
    page.ready()
    assert page.text("query") == session.pool.queries[0].text
    assert "0 of 4 queries done" in page.text("progress")
    source = page.driver.page_source.lower()
    for word in ("bm25", "candidate", "base model", "minilm", str(tiny_st).lower()):
        assert word not in source   # blind: no system named anywhere
    _, n1 = page.judge_current_query()
    page.press(Keys.ENTER)
    # half of the second query, then a screenshot and a reload: it must resume right there
    q2 = session.pool.queries[1]
    page.press("1", "0", "j", "k")
    page.saved()
    page.driver.save_screenshot(str(tmp_path / "judge.png"))
    page.driver.refresh()
    page.ready()
    assert page.text("query") == q2.text
    assert f"1 of 4 queries done · {n1 + 2} of" in page.text("progress")
    shown = page.passages()
    assert [shown[d] for d in q2.docs[:2]] == ["1", "0"] and shown[q2.docs[2]] is None
    focus = page.driver.find_element(page.by.CSS_SELECTOR, ".passage.focus").get_attribute("data-doc")
    assert focus == q2.docs[2]   # the first unjudged passage
    assert "not yet" in page.text("status")
    for _ in range(3):
        page.judge_current_query()
        page.press(Keys.ENTER)
    assert "4 of 4 queries done" in page.text("progress")
    page.driver.find_element(page.by.ID, "export").click()
    page.wait.until(lambda d: "exported 4 judged queries" in d.find_element(page.by.ID, "exported").text)
    assert "ndcg" not in page.text("exported").lower()
    return q2


def _check_the_export(cfg, tmp_path, session, truth, q2, exported, tiny_st) -> None:
    """Every keystroke is on disk; the export evaluates with trec_eval like any BEIR folder."""
    from kadet.stages.evaluate import evaluate

    grades = read_judgements(tmp_path / "out" / JUDGEMENTS_FILE)
    assert sum(len(g) for g in grades.values()) == sum(len(q.docs) for q in session.pool.queries)
    assert grades[q2.qid][q2.docs[0]] == (2 if truth[q2.qid].get(q2.docs[0]) else 0)   # re-judged: last wins
    (result,) = exported
    cfg.data.data_dir = str(tmp_path / "exp")
    base = evaluate(cfg, model="all-MiniLM-L6-v2")
    cand = evaluate(cfg, model=str(tiny_st))
    assert len(base.per_query) == 4
    assert base.metrics["ndcg@10"] == pytest.approx(result.status.base, abs=1e-6)
    assert cand.metrics["ndcg@10"] == pytest.approx(result.status.candidate, abs=1e-6)
    assert base.metrics["ndcg@10"] > 0.3 > cand.metrics["ndcg@10"]   # MiniLM vs a random tiny model
    if os.environ.get("KADET_JUDGE_SCREENSHOT"):   # how docs/judge.png is made
        shutil.copyfile(tmp_path / "judge.png", os.environ["KADET_JUDGE_SCREENSHOT"])
