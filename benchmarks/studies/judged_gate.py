"""A judged set made with ``kadet judge``'s page, and the gate's decision on it.

The user's situation: a corpus, a candidate from a silver run, and their own queries without
judgements. This script takes a slice and a candidate that ``benchmarks/studies/gate.py`` built (the
corpus alone was adapted, judgements withheld), gives the slice's judged queries to ``kadet judge``
as the user's own queries (their judgements withheld), and judges them **through the real page in
headless chromium with the keyboard**. The person at the keyboard is stood in for by the
collection's human judgements: a passage judged relevant in the qrels gets ``2``, any other ``n``
(0). The export then makes the gate gold: ``kadet.stages.evaluate.compare`` on the exported folder and
``kadet.registry.register.decide`` exactly as the register step applies them when there is no champion.
For reference it prints the same candidate on all the slice's judged queries (what the gate would
say with every judgement).

    python -m benchmarks.studies.gate --corpora scifact --candidates default     # first: slice and candidate
    python -m benchmarks.studies.judged_gate --corpus scifact --candidate default --queries 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

from kadet.kit.models import offline_env

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "benchmarks" / "results" / "judged_gate.jsonl"


def judge_in_browser(session, truth: dict[str, dict[str, int]]) -> float:
    """Grade every pooled passage of every query on the page with the keyboard; returns seconds."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from kadet.tools.judge import make_server, url_of
    from tests.doubles.browser import headless_chrome

    server = make_server(session)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = headless_chrome()
    wait = WebDriverWait(driver, 30)
    t0 = time.perf_counter()
    try:
        driver.get(url_of(server))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        body = driver.find_element(By.TAG_NAME, "body")
        for _ in session.pool.queries:
            qid = session.pool.queries[int(driver.execute_script("return S.qi"))].qid
            docs = [c.get_attribute("data-doc") for c in driver.find_elements(By.CSS_SELECTOR, ".passage")]
            for doc in docs:
                body.send_keys("2" if truth.get(qid, {}).get(doc, 0) > 0 else "n")
            wait.until(lambda d: d.find_element(By.ID, "saved").text == "all answers saved")
            body.send_keys(Keys.ENTER)
        status = driver.find_element(By.ID, "status").text
        driver.find_element(By.ID, "export").click()
        wait.until(lambda d: "exported" in d.find_element(By.ID, "exported").text)
        print(f"page status at the end: {status}", flush=True)
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    return time.perf_counter() - t0


def gate(cfg, data: Path, candidate: str, out: Path) -> dict:
    """The register step's decision with no champion: candidate vs base model on ``data``."""
    from kadet.stages.evaluate import compare
    from kadet.registry.register import decide

    cfg.data.data_dir, cfg.data.qrels, cfg.data.split = str(data), "", "test"
    comp = compare(cfg, candidate, out)
    e = cfg.evaluation
    g = comp.gain(e.ndcg)
    d = decide(comp.candidate, comp.base, cfg.register, "base model", g, e, comp.kind)
    return {"kind": comp.kind, "queries": comp.queries, "base": round(comp.base[e.ndcg], 4),
            "candidate": round(comp.candidate[e.ndcg], 4), "gain": round(g["mean"], 4),
            "ci": [round(g["ci_low"], 4), round(g["ci_high"], 4)], "promote": d.promote, "reason": d.reason}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate-root", default=".kadet/gate", help="benchmarks/studies/gate.py's --root")
    ap.add_argument("--corpus", default="scifact")
    ap.add_argument("--candidate", default="default")
    ap.add_argument("--queries", type=int, default=40, help="queries to judge (kadet judge --max-queries)")
    ap.add_argument("--out", default=".kadet/judged-gate")
    args = ap.parse_args()
    offline_env(tokenizer_threads=True)
    from kadet.core.config import load_config, profile_config
    from kadet.kit.data import load_beir
    from kadet.tools.judge import JudgeSettings, open_session

    root, out = Path(args.gate_root), Path(args.out)
    gold = root / args.corpus / "gold"
    from benchmarks.studies.gate import candidate_dir

    model = candidate_dir(root, args.corpus, args.candidate) / "model"
    if not (model / "modules.json").exists():
        raise SystemExit(f"{model}: run benchmarks/studies/gate.py --corpora {args.corpus} --candidates {args.candidate} first")
    shutil.rmtree(out, ignore_errors=True)
    mine = out / "my-corpus"                       # the user's folder: corpus + their queries, no judgements
    mine.mkdir(parents=True)
    shutil.copyfile(gold / "corpus.jsonl", mine / "corpus.jsonl")
    shutil.copyfile(gold / "queries.jsonl", out / "my-queries.jsonl")
    truth = load_beir(gold, "test").qrels
    cfg = load_config(None, [f"work_dir={root}"], base=profile_config("local"))
    settings = JudgeSettings(base=cfg.retrieval.model, candidate=str(model), max_queries=args.queries)
    t0 = time.perf_counter()
    session = open_session(cfg, mine, out / "my-queries.jsonl", out / "judge", settings)
    pool_s = time.perf_counter() - t0
    seconds = judge_in_browser(session, truth)
    passages = sum(len(q.docs) for q in session.pool.queries)
    judged = gate(cfg, mine, str(model), out / "eval-judged")
    everything = gate(cfg, gold, str(model), out / "eval-all")
    row = {"corpus": args.corpus, "candidate": args.candidate, "pooled_passages": passages,
           "picks": {p: sum(q.pick == p for q in session.pool.queries) for p in ("disagreement", "random")},
           "pool_seconds": round(pool_s, 1), "judging_seconds": round(seconds, 1),
           "judged_set": judged, "all_judged_queries": everything}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"| gate on | queries | base nDCG@10 | candidate | gain [90% CI] | decision |\n|---|---|---|---|---|---|")
    for name, r in (("kadet judge set (page, keyboard)", judged), ("all judged queries of the slice", everything)):
        print(f"| {name} | {r['queries']} | {r['base']:.4f} | {r['candidate']:.4f} | {r['gain']:+.4f} "
              f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | {'promote' if r['promote'] else 'refuse'}: {r['reason']} |")
    print(f"{passages} passages pooled for {len(session.pool.queries)} queries ({row['picks']}); "
          f"pool {pool_s:.0f} s, judging through the page {seconds:.0f} s")


if __name__ == "__main__":
    main()
