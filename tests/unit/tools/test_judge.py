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
from kadet.tools.judge import (GRADES, JUDGEMENTS_FILE, POOL_FILE, JudgeSettings, Judgements, Pool, PoolQuery, Session,
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
    assert read_judgements(j.path) == {"q1": {"d1": 2}}   # a bad grade is reported (file:line) and skipped
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


# ---------------------------------------------------------------- reliability: grades, torn logs, bad requests


def test_a_grade_is_the_integer_0_1_or_2_and_an_old_2_0_never_breaks_the_session(tmp_path, tiny_beir, caplog):
    """The page once accepted 2.0 and saved it; from then on every call about that query dropped
    the connection and ``--export`` crashed after writing part of the qrels."""
    session = _session(tmp_path, tiny_beir, _pool(1, ["d1", "d2"]), export_to=tmp_path / "exported")
    server = make_server(session)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ok = {"X-Kadet-Judge": "1", "Content-Type": "application/json"}
    try:
        for bad in (2.0, "2", True, -1, 3, None, [2]):
            status, _, body = _request(server, "POST", "/api/judge", {"qid": "q1", "doc_id": "d1", "grade": bad}, ok)
            assert status == 400 and "integer 0, 1 or 2" in json.loads(body)["error"], bad
        assert not session.judgements.path.exists()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(KadetError, match="integer 0, 1 or 2"):
        session.judgements.add("q1", "d1", 2.0)
    # a log an older kadet wrote with 2.0: read as 2, reported with its line; the export works
    session.judgements.path.write_text('{"qid": "q1", "doc_id": "d1", "grade": 2.0}\n'
                                       '{"qid": "q1", "doc_id": "d2", "grade": 0}\n', encoding="utf-8")
    with caplog.at_level("WARNING"):
        session.judgements = Judgements(session.judgements.path)
    assert "judgements.jsonl:1: field 'grade': 2.0 read as 2" in caplog.text
    assert session.judgements.snapshot() == {"q1": {"d1": 2, "d2": 0}}
    assert session.status().public()["done"] == 1
    export(session)
    assert (tmp_path / "exported" / "qrels" / "test.tsv").read_text() == "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n"
    # a bad grade that reached memory anyway: refused before any file is written
    session.judgements.grades["q1"]["d1"] = 1.5
    with pytest.raises(KadetError, match="not exported: 1 grades"):
        export(session, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_torn_last_line_is_cut_before_the_next_answer(tmp_path, caplog):
    """A crash mid-write left a torn last line; the next answer was glued to it and the next start
    refused the log, losing the answer acknowledged after the crash."""
    path = tmp_path / JUDGEMENTS_FILE
    path.write_text('{"qid": "q1", "doc_id": "d1", "grade": 1}\n{"qid": "q1", "doc_id": "d2", "gr', encoding="utf-8")
    j = Judgements(path)
    assert j.snapshot() == {"q1": {"d1": 1}}
    j.add("q1", "d3", 2)                     # acknowledged after the crash
    assert path.read_text(encoding="utf-8").splitlines()[1].startswith('{"qid": "q1", "doc_id": "d3", "grade": 2')
    assert Judgements(path).snapshot() == {"q1": {"d1": 1, "d3": 2}}
    # a log an older kadet glued: the whole answer at the end of the line is kept, reported
    path.write_text('{"qid": "q1", "doc_id": "d2", "gr{"qid": "q1", "doc_id": "d3", "grade": 0, "at": "x"}\n',
                    encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert read_judgements(path) == {"q1": {"d3": 0}}
    assert "jsonl:1: a torn answer glued" in caplog.text


def _raw(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes and read the answer until the server closes the connection."""
    import socket

    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _post_head(length: str, path: str = "/api/judge") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Kadet-Judge: 1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_bad_bodies_are_answered_never_hang_or_log_a_traceback(tmp_path, tiny_beir, caplog, capfd):
    """A negative or oversized Content-Length once blocked a handler thread forever; deep JSON
    nesting logged a traceback."""
    session = _session(tmp_path, tiny_beir, _pool(1, ["d1", "d2"]))
    server = make_server(session, timeout=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert b" 411 " in _raw(server, _post_head("-1") + b'{"qid": "q1"}')
        assert b" 411 " in _raw(server, _post_head("abc"))
        assert b" 413 " in _raw(server, _post_head(str(10 ** 9)) + b"{}")
        assert b" 408 " in _raw(server, _post_head("500") + b'{"qid": ')          # shorter than announced
        deep = b"[" * 60000 + b"]" * 60000                                         # over 64 KiB
        assert b" 413 " in _raw(server, _post_head(str(len(deep))) + deep)
        deep = b"[" * 30000 + b"]" * 30000                                         # nesting too deep to parse
        assert b" 400 " in _raw(server, _post_head(str(len(deep))) + deep)
        assert b" 400 " in _raw(server, _post_head("4") + b"\xff\xfe{}")
        good = b'{"qid": "q1", "doc_id": "d1", "grade": 1}'
        assert b" 200 " in _raw(server, _post_head(str(len(good))) + good)
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err and "Traceback" not in caplog.text


def test_bad_queries_file_and_port_are_one_line_errors(tmp_path, tiny_beir, tiny_st, capsys):
    from kadet.cli import main

    latin = tmp_path / "logs.txt"
    latin.write_bytes("caf\xe9 and the liver\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"logs\.txt.*not UTF-8 text"):
        read_user_queries(latin)
    argv = ["judge", "--data", str(tiny_beir), "--queries", str(latin), "--model", str(tiny_st), "--out",
            str(tmp_path / "judge"), "--work-dir", str(tmp_path / "work"), "--no-browser"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "logs.txt" in err and "not UTF-8" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(argv + ["--port", "99999"])
    err = capsys.readouterr().err
    assert "argument --port: 99999 must be <= 65535" in err and "Traceback" not in err
    with pytest.raises(KadetError, match="port 99999 is out of range"):
        make_server(_session(tmp_path, tiny_beir, _pool(1, ["d1"])), port=99999)


def _fuzz_request(rng, pool: Pool) -> tuple[str, bytes]:
    """One random request: ``(kind, raw bytes)``; ``kind`` "answer" for a well-formed answer."""
    q = rng.choice(pool.queries)
    doc = rng.choice(q.docs)
    grade = rng.choice([0, 1, 2, 2.0, "2", True, -1, 3, None, [1], 10 ** 30])
    kind = rng.choice(["answer"] * 6 + ["types", "unknown", "array", "utf8", "nested", "oversize", "length",
                                        "short", "long", "csrf", "host", "get", "export"])
    body = json.dumps({"qid": q.qid, "doc_id": doc, "grade": rng.choice(GRADES)}).encode()
    head, length, path = {"Host": "127.0.0.1", "X-Kadet-Judge": "1"}, None, "/api/judge"
    if kind == "types":
        body = json.dumps({"qid": rng.choice([q.qid, 1, None, ["q1"]]), "doc_id": rng.choice([doc, 7, {}]),
                           "grade": grade}).encode()
    elif kind == "unknown":
        body = json.dumps({"qid": "q" + "9" * rng.randint(1, 300), "doc_id": "d\u00e9\U0001F600", "grade": 1}).encode()
    elif kind == "array":
        body = rng.choice([b"[1, 2]", b"null", b"2", b'"x"', b"", b"{", b"NaN"])
    elif kind == "utf8":
        body = b'{"qid": "\xff\xfe", "doc_id": "d1", "grade": 1}'
    elif kind == "nested":
        depth = rng.randint(1000, 30000)
        body = b'{"a": ' * depth + b"1" + b"}" * depth if rng.random() < 0.5 else b"[" * depth + b"]" * depth
    elif kind == "oversize":
        length, body = str(rng.choice([10 ** 6, 10 ** 12, 2 ** 63])), b"{}"
    elif kind == "length":
        length = rng.choice(["-1", "-99999", "abc", "1e3", "\u00b2", "0x10", "9" * 40, ""])
    elif kind == "short":
        length = str(len(body) + rng.randint(1, 500))   # more announced than sent: the read times out
    elif kind == "long":
        length = str(max(0, len(body) - rng.randint(1, 10)))   # less announced: a cut JSON
    elif kind == "csrf":
        head.pop("X-Kadet-Judge")
    elif kind == "host":
        head["Host"] = "evil.example"
    elif kind == "export":
        path, body = "/api/export", b"{}"
    method = "GET" if kind == "get" else "POST"
    if kind == "get":
        path, body = rng.choice(["/", "/api/state", "/api/status", "/nowhere", "/" + "x" * 5000, "/%ff"]), b""
    head["Content-Length"] = str(len(body)) if length is None else length
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
    return kind, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def test_fuzz_the_server_keeps_every_acknowledged_answer(tmp_path, tiny_beir, capfd):
    """300 random and malformed requests from 4 threads at once against a local server (bounded:
    under a minute): no 5xx, no traceback, the server still answers, the log reads back, and every
    answer it acknowledged (200) is in the log after a restart, also after a torn write."""
    import random
    import socket
    import time
    from collections import Counter


    pool = _pool(3, ["d1", "d2", "d3", "d4"])
    session = _session(tmp_path, tiny_beir, pool, export_to=tmp_path / "exported")
    server = make_server(session, timeout=0.3)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    acked, statuses, dropped, lock = Counter(), Counter(), Counter(), threading.Lock()
    deadline = time.monotonic() + 45

    def client(seed: int, n: int) -> None:
        rng = random.Random(seed)
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            kind, data = _fuzz_request(rng, pool)
            try:
                with socket.create_connection(server.server_address[:2], timeout=5) as sock:
                    sock.sendall(data)
                    reply = b"".join(iter(lambda: sock.recv(65536), b""))
                status = int(reply.split(b" ", 2)[1])
            except (ConnectionError, IndexError, ValueError) as exc:   # an answer cut or never sent
                with lock:
                    dropped[f"{kind}: {type(exc).__name__}"] += 1
                continue
            with lock:
                statuses[status] += 1
                if kind == "answer" and status == 200:
                    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
                    acked[(body["qid"], body["doc_id"], body["grade"])] += 1

    threads = [threading.Thread(target=client, args=(seed, 75)) for seed in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert serving.is_alive() and _request(server, "GET", "/api/state")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    sent = sum(statuses.values()) + sum(dropped.values())
    # a restart after a crash mid-write: the torn tail is cut before the next answer
    with open(session.judgements.path, "a", encoding="utf-8") as fh:
        fh.write('{"qid": "q1", "doc_id": "d1", "gra')
    restarted = Judgements(session.judgements.path)
    restarted.add("q2", "d2", 1)
    acked[("q2", "d2", 1)] += 1
    logged = Counter((r["qid"], r["doc_id"], r["grade"]) for r in map(json.loads, session.judgements.path.open()))
    lost = sum(max(0, n - logged[k]) for k, n in acked.items())
    errors = sum(n for s, n in statuses.items() if s >= 400)
    err = capfd.readouterr().err
    crashes = sum(n for s, n in statuses.items() if s >= 500) + err.count("Traceback")
    print(f"\nfuzz: {sent} requests sent in {time.monotonic() - started:.1f}s, {errors} errors returned "
          f"({dict(sorted(statuses.items()))}), {sum(acked.values())} answers acknowledged, server crashes {crashes}, "
          f"answers lost {lost}, connections dropped {sum(dropped.values())} {dict(dropped)}")
    assert sent == 300 and crashes == 0 and lost == 0, err[-3000:]
    assert not dropped and sum(acked.values()) > 50
    final = Judgements(session.judgements.path).snapshot()          # a second restart reads it all back
    assert all(final[q][d] in GRADES for q in final for d in final[q])
