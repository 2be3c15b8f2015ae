"""The registry gate: the comparator on constructed metrics, then registration, aliases and
idempotence against a real ``mlflow server`` on 127.0.0.1 (tiny random models: plumbing only)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mlflow
import pytest

from kadet.kit.comparison import Comparison
from kadet.core.config import load_config
from kadet.core.errors import ConfigError
from kadet.stages.evaluate import compare, evaluate
from kadet.registry.promotion import mark_challenger, promote
from kadet.registry.register import FAILURE_TAG, decide, register_candidate
from kadet.registry import tracking

NDCG, RECALL = "ndcg@10", "recall@100"          # the default evaluation.ndcg_k / recall_k
GATE = load_config(None, ["register.ndcg_floor=0.3", "register.min_delta=0.01", "register.max_recall_drop=0.02"]).register


def m(ndcg, recall=0.9):
    return {NDCG: ndcg, RECALL: recall}


def test_no_incumbent_only_the_floor_counts():
    assert decide(m(0.31), None, GATE).promote
    d = decide(m(0.29), None, GATE)
    assert not d.promote and d.reasons == ["nDCG@10 0.2900 below the floor 0.3000"]


def test_tie_with_the_required_margin_promotes_and_below_it_does_not():
    assert decide(m(0.61), m(0.60), GATE).promote                      # exactly incumbent + min_delta
    assert decide(m(0.6 + 0.01 - 1e-12), m(0.60), GATE).promote        # float noise is a tie
    worse = decide(m(0.605), m(0.60), GATE, "champion v3")
    assert not worse.promote and "below champion v3's 0.6000 + 0.01" in worse.reason


def test_recall_tolerance():
    assert decide(m(0.7, recall=0.88), m(0.6, recall=0.90), GATE).promote   # drop 0.02 = tolerance
    d = decide(m(0.7, recall=0.87), m(0.6, recall=0.90), GATE)
    assert not d.promote and d.reasons[0].startswith("Recall@100 0.8700 dropped more than 0.02")


def test_every_failing_gate_is_reported():
    d = decide(m(0.2, recall=0.5), m(0.6, recall=0.9), GATE)
    assert not d.promote and len(d.reasons) == 3


def test_silver_refuses_unless_opted_in_and_says_what_to_do():
    d = decide(m(0.9), m(0.6), GATE, kind="silver")
    assert not d.promote and len(d.reasons) == 1 and "kadet judge" in d.reason
    assert decide(m(0.9), m(0.6), GATE, kind="gold").promote
    opted = load_config(None, ["register.ndcg_floor=0.3", "register.silver_promotes=true"]).register
    assert decide(m(0.9), m(0.6), opted, kind="silver").promote
    both = decide(m(0.2), m(0.6), GATE, kind="silver")                # every reason still listed
    assert not both.promote and len(both.reasons) == 3


def test_non_finite_metrics_or_settings_never_promote():
    nan = float("nan")
    assert not decide(m(nan), m(0.6), GATE).promote                   # NaN >= x is False: was promoted
    assert not decide(m(0.7), m(nan), GATE, "champion v2").promote
    assert not decide(m(0.7, recall=float("inf")), None, GATE).promote
    with pytest.raises(ConfigError, match="'register.min_delta' = nan must be >= 0"):   # refused at load
        load_config(None, ["register.min_delta=.nan"])
    bad = load_config(None).register
    bad.min_delta = float("nan")                                      # and by the gate, if set in code
    d = decide(m(0.7), m(0.6), bad)
    assert not d.promote and "register.min_delta" in d.reason


def test_a_gain_within_noise_is_not_a_gain():
    from kadet.stages.evaluate import paired_bootstrap

    base = {f"q{i}": 0.5 for i in range(300)}
    noisy = {q: v + (0.3 if i % 2 else -0.28) for i, (q, v) in enumerate(base.items())}   # mean +0.01, huge spread
    steady = {q: v + 0.02 + 0.01 * (i % 3 - 1) for i, (q, v) in enumerate(base.items())}  # +0.02, small spread
    g_noisy, g_steady = paired_bootstrap(base, noisy, seed=1), paired_bootstrap(base, steady, seed=1)
    assert g_noisy["ci_low"] < 0 < g_noisy["ci_high"] and g_noisy["mean"] == pytest.approx(0.01)
    assert 0 < g_steady["ci_low"] < 0.02 < g_steady["ci_high"] and g_steady["p_ahead"] == 1.0
    gate = load_config(None, ["register.confidence=0.9"]).register
    d = decide(m(0.51), m(0.50), gate, "base model", g_noisy)
    assert not d.promote and "within noise" in d.reason and "[-" in d.reason
    assert decide(m(0.52), m(0.50), gate, "base model", g_steady).promote
    off = load_config(None, ["register.confidence=0"]).register
    assert decide(m(0.51), m(0.50), off, "base model", g_noisy).promote


def test_the_card_says_what_each_loss_setting_trained_with():
    """Was: InfoNCE-only training was called "infonce (listwise KL, ...)" on the card."""
    from kadet.stages.distill.card import loss_text

    d = load_config(None, []).distill
    assert loss_text(d, 0.3) == "listwise (listwise KL, teacher temperature 0.3, plus 0.1 x InfoNCE)"
    d.kl_weight, d.nce_weight = 2.0, 0.0
    assert loss_text(d, 0.05) == "listwise (2 x listwise KL, teacher temperature 0.05)"
    d.loss = "infonce"
    assert loss_text(d, 0.3).startswith("infonce (InfoNCE alone, temperature 0.01:") and "KL" not in loss_text(d, 0.3)




def comparison(cand, base=m(0.5), eval_data="sha256:data-A"):
    return {"eval_data": eval_data, "candidate": cand, "base": base, "models": {"base": "all-MiniLM-L6-v2"}}


def gate_run(cfg, model, comp, evaluate_fn=None):
    """The register step's decision on ``comp`` (comparison.json's object), then the aliases as
    the pipeline's next task sets them: promote (which may still refuse) or challenger."""
    with tracking.stage_run(cfg, "register", pipeline_run="test"):
        kw = {"evaluate_fn": evaluate_fn} if evaluate_fn else {}
        r = register_candidate(cfg, model, Comparison.from_json(comp), "test", **kw)
    if r.decision.promote:
        promote(cfg, r.version)
    else:
        mark_challenger(cfg, r.version, r.decision.reason)
    return r


def test_registry_gate_against_a_real_mlflow_server(server, models, tmp_path, tiny_beir):
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=gate-test",
                             "register.ndcg_floor=0.3", "register.min_delta=0.0", f"data.data_dir={tiny_beir}"])
    c = tracking.client(cfg)
    alias = lambda a: c.get_model_version_by_alias("gate-test", a).version  # noqa: E731

    # 1. no champion yet: the incumbent is the base model from the same evaluation
    r1 = gate_run(cfg, models[0], comparison(m(0.70)))
    assert r1.version == "1" and r1.decision.promote and r1.decision.incumbent == "base model"
    assert alias("champion") == "1"
    v1 = c.get_model_version("gate-test", "1")
    assert v1.tags["kadet.ndcg_at_10"] == "0.700000" and v1.tags["kadet.eval_data"] == "sha256:data-A"
    loaded = mlflow.sentence_transformers.load_model("models:/gate-test@champion")  # the logged model loads
    assert loaded.encode(["a query"]).shape == (1, 32)

    # 2. rerun with the same model folder: no new version, still champion
    r1b = gate_run(cfg, models[0], comparison(m(0.70)))
    assert r1b.version == "1" and r1b.reused and r1b.decision.promote
    assert len(c.search_model_versions("name = 'gate-test'")) == 1 and alias("champion") == "1"

    # 3. a worse candidate: registered, challenger with the reason; the champion stays
    r2 = gate_run(cfg, models[1], comparison(m(0.65)))
    assert r2.version == "2" and not r2.decision.promote
    assert alias("champion") == "1" and alias("challenger") == "2"
    assert "below champion v1's 0.7000" in c.get_model_version("gate-test", "2").tags[FAILURE_TAG]
    r2b = gate_run(cfg, models[1], comparison(m(0.65)))                 # rerun: same outcome, no new version
    assert r2b.version == "2" and alias("champion") == "1" and alias("challenger") == "2"

    # 4. a tie with the champion (min_delta 0) promotes; the challenger alias left on v2 stays there
    r3 = gate_run(cfg, models[2], comparison(m(0.70)))
    assert r3.decision.promote and alias("champion") == "3"

    # 5. the champion was measured on other test data: it is evaluated again on this data
    calls = []

    def spy(cfg_, model_dir):
        calls.append(model_dir)
        return evaluate(cfg_, model=str(model_dir), retriever="dense").metrics

    real = evaluate(cfg, model=str(models[2]), retriever="dense").metrics   # v3 = models[2] on tiny_beir
    r4 = gate_run(cfg, models[1], comparison(m(real[NDCG] + 0.05, real[RECALL]), eval_data="sha256:data-B"), spy)
    assert len(calls) == 1 and r4.decision.incumbent == "champion v3 (re-evaluated)"
    assert r4.incumbent_metrics[NDCG] == pytest.approx(real[NDCG])
    assert r4.decision.promote and alias("champion") == "2"                  # v2 reused, now champion
    assert FAILURE_TAG not in c.get_model_version("gate-test", "2").tags


def test_stage_runs_nest_under_one_parent_on_the_server(server, tmp_path, tiny_beir):
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "tracking.experiment=nest",
                             f"data.data_dir={tiny_beir}"])
    with tracking.stage_run(cfg, "evaluate", pipeline_run="p1"):
        compare(cfg, "all-MiniLM-L6-v2", tmp_path / "ev")
        from kadet.core.manifest import Manifest

        tracking.log_manifest(Manifest.read(tmp_path / "ev"), tmp_path / "ev")
    with pytest.raises(RuntimeError):
        with tracking.stage_run(cfg, "register", pipeline_run="p1"):
            raise RuntimeError("boom")
    c = tracking.client(cfg)
    exp = tracking.experiment_id(cfg)
    parent = tracking.parent_run_id(cfg, "p1")
    runs = c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", order_by=["attributes.start_time ASC"])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("evaluate", "FINISHED"), ("register", "FAILED")]
    assert runs[1].data.tags["kadet.error"] == "RuntimeError: boom"        # why, on one line
    assert "stage register failed" in Path(runs[1].data.tags["kadet.log"]).read_text()
    ev = runs[0]
    assert ev.data.params["data.data_dir"] == str(tiny_beir) and "count.queries" in ev.data.metrics
    assert {d.dataset.name for d in ev.inputs.dataset_inputs} == {"corpus", "queries", "qrels"}
    assert [a.path for a in c.list_artifacts(ev.info.run_id)] == ["manifest.json"]


def test_two_registrations_racing_leave_the_better_model_champion(server, models, tmp_path, monkeypatch):
    """Two pipeline runs register (both decide against "no champion") and then promote at the same
    moment: a pause injected into each run's first alias write (fault injection at the store
    client: promote reads the champion, then writes) makes both read "none" before either writes.
    Was: both promoted, the last writer (the worse v2) stayed champion. Now the compare-and-set
    converges on the better v1, in either order."""
    write_alias = mlflow.MlflowClient.set_registered_model_alias
    for order in ("better-first", "worse-first"):
        name = f"race-{order}"
        cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", f"register.model_name={name}",
                                 "register.promote_settle_s=1", "register.confidence=0"])
        metrics = [m(0.70), m(0.66)] if order == "better-first" else [m(0.66), m(0.70)]
        with tracking.stage_run(cfg, "register", pipeline_run=name):
            regs = [register_candidate(cfg, models[i], Comparison.from_json(comparison(metrics[i])), name)
                    for i in range(2)]
        assert all(r.decision.promote for r in regs)          # each decided against "no champion"
        both_read = threading.Barrier(2, timeout=30)
        waited = set()

        def paused_write(client, *args, **kwargs):
            if threading.get_ident() not in waited:            # only the first read-then-write of each run
                waited.add(threading.get_ident())
                both_read.wait()
            return write_alias(client, *args, **kwargs)

        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", paused_write)
        results, errors = {}, []

        def promote_step(r):
            try:
                results[r.version] = promote(cfg, r.version)
            except Exception as exc:  # pragma: no cover - surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=promote_step, args=(r,)) for r in regs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(waited) == 2
        c = tracking.client(cfg)
        better = regs[0].version if order == "better-first" else regs[1].version
        worse = regs[1].version if order == "better-first" else regs[0].version
        assert c.get_model_version_by_alias(name, "champion").version == better, order
        assert results[better].promote
        if not results[worse].promote:                        # it noticed; else it was overtaken after it looked
            assert "below champion v" in results[worse].reason
            assert c.get_model_version_by_alias(name, "challenger").version == worse


def test_the_gate_follows_the_configured_metric_cutoffs(server, models, tmp_path):
    """Was: ``evaluation.ndcg_k=5`` made the gate fail with KeyError 'ndcg@10'."""
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=at-5",
                             "evaluation.ndcg_k=5", "evaluation.recall_k=20", "register.confidence=0"])
    at5 = lambda nd, rc=0.9: {"ndcg@5": nd, "recall@20": rc}  # noqa: E731
    comp = {"eval_data": "sha256:data-A", "candidate": at5(0.7), "base": at5(0.5), "models": {"base": "b"}}
    r = gate_run(cfg, models[0], comp)
    assert r.decision.promote and r.candidate == at5(0.7)
    tags = tracking.client(cfg).get_model_version("at-5", r.version).tags
    assert tags["kadet.ndcg_at_5"] == "0.700000" and tags["kadet.recall_at_20"] == "0.900000"
    worse = gate_run(cfg, models[1], {**comp, "candidate": at5(0.6)})
    assert not worse.decision.promote and "nDCG@5 0.6000 below champion v1's 0.7000" in worse.decision.reason



ROUNDS = 6


def _log_like_a_shard(server: str, work: str, i: int, starts: list[float]) -> str:
    """One label shard in its own process: one stage run that logs the shared ``candidates`` input
    (a new digest each round) at the same instants as the other shards."""
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={work}", "tracking.experiment=shards"])
    with tracking.stage_run(cfg, f"label-{i}", pipeline_run="shards") as run:
        for r, t0 in enumerate(starts):
            while time.time() < t0:
                time.sleep(0.001)
            tracking.log_inputs({"candidates": {"uri": f"{work}/candidates.jsonl", "fingerprint": f"sha256:{r:02d}" + "f" * 62}})
        return run.info.run_id


def test_parallel_shards_log_the_same_input_dataset(server, tmp_path, monkeypatch):
    """Was: two label shards (processes) logging the same ``candidates`` file at once made the
    server's get-or-insert of the dataset row fail on its unique key (sqlite IntegrityError) and
    the shard failed (seen in CI). Now the loser retries and finds the row the other wrote."""
    import multiprocessing

    (tmp_path / "candidates.jsonl").write_text("{}\n")
    n = 4
    starts = [time.time() + 15 + 0.5 * r for r in range(ROUNDS)]     # after the workers have started
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        run_ids = pool.starmap(_log_like_a_shard, [(server, str(tmp_path), i, starts) for i in range(n)])
    c = tracking.client(load_config(None, [f"tracking.tracking_uri={server}"]))
    for rid in run_ids:
        logged = c.get_run(rid).inputs.dataset_inputs
        assert sorted(d.dataset.digest for d in logged) == [f"{r:02d}" + "f" * 14 for r in range(ROUNDS)]

    # lineage is best effort: a server that keeps refusing (fault injection) never fails the stage
    def refuse(*a, **k):
        raise mlflow.exceptions.MlflowException("BAD_REQUEST: refused")

    monkeypatch.setattr(mlflow, "log_input", refuse)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "tracking.experiment=shards"])
    with tracking.stage_run(cfg, "label-again", pipeline_run="shards"):
        tracking.log_inputs({"candidates": {"uri": str(tmp_path / "candidates.jsonl")}})


def test_the_registered_model_carries_the_full_model_card(server, models, tmp_path):
    """The card in the registered model's folder has the training facts distill wrote plus the
    evaluation and the registry version it became; the version's description is the card."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from kadet.stages.distill import card

    folder = tmp_path / "candidate"
    shutil.copytree(models[2], folder)
    card.update(folder, base_model="all-MiniLM-L6-v2", train_queries_by_type={"question": 5, "claim": 3},
                teacher="ensemble", mode="query")
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=carded",
                             "register.confidence=0"])
    comp = {**comparison(m(0.7)), "kind": "silver", "queries": 50}
    r = gate_run(cfg, folder, comp)
    c = tracking.client(cfg)
    mlflow.set_tracking_uri(server)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/carded/{r.version}", dst_path=str(tmp_path / "dl")))
    st_dir = next(p.parent for p in local.rglob("README.md"))
    text = (st_dir / "README.md").read_text()
    assert f"version **{r.version}**" in text and "**silver**" in text and "| **all** | 8 |" in text
    assert "| candidate | 0.7000 |" in text and ("gate: passed" in text) == r.decision.promote
    assert SentenceTransformer(str(st_dir), device="cpu").encode(["x"]).shape[1] > 0   # still a model folder
    assert f"version **{r.version}**" in c.get_model_version("carded", r.version).description


def test_a_silver_candidate_is_never_compared_with_a_gold_champion(server, models, tmp_path, tiny_beir, monkeypatch):
    """The champion was measured on judged queries (gold); the candidate on held-out synthetic
    queries (silver). The register step re-evaluates the champion on the same silver set (the
    folder the evaluate step wrote) before deciding, and says the decision rests on silver."""
    import json
    import shutil

    import kadet.registry.register as register
    from kadet.kubeflow.steps import register_step

    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=silver",
                             "register.confidence=0", f"data.data_dir={tiny_beir}"])
    gold = gate_run(cfg, models[0], comparison(m(0.95, 0.99), eval_data="sha256:gold"))
    assert gold.decision.promote
    ev = tmp_path / "ev"
    shutil.copytree(tiny_beir, ev / "silver")                         # stands in for the held-out silver set
    comp = {**comparison(m(0.60), eval_data="sha256:silver-set"), "kind": "silver", "silver_dir": "silver"}
    (ev / "comparison.json").write_text(json.dumps(comp))
    seen = []

    def spy(cfg_, model_dir, eval_dir=None):
        seen.append((cfg_.data.data_dir, eval_dir))
        return {"ndcg@10": 0.55, "recall@100": 0.9}

    monkeypatch.setattr(register, "evaluate_model", spy)
    cfg.register.silver_promotes = True                                # the old behaviour, opted into
    out = register_step(cfg, str(models[1]), str(ev), "silver-run")
    # re-measured on the silver set, not gold 0.95: the set is the gate's input, the config is not rewritten
    assert seen == [(cfg.data.data_dir, str(ev / "silver"))] and cfg.data.data_dir != str(ev / "silver")
    assert out["promote"] and out["incumbent"] == "champion v1 (re-evaluated)"
    c = tracking.client(cfg)
    assert c.get_model_version("silver", out["version"]).tags["kadet.eval_kind"] == "silver"
    runs = c.search_runs([tracking.experiment_id(cfg)], filter_string="tags.`kadet.pipeline_run` = 'silver-run'")
    gate = next(r for r in runs if r.info.run_name == "register").data.tags["kadet.gate"]
    assert gate.startswith("passed (silver: held-out synthetic queries judged by the teacher")


def test_silver_never_promotes_by_default(server, models, tmp_path, tiny_beir, monkeypatch):
    """Was: a candidate that beat everything on silver was promoted (and real queries showed it
    worse). Now, with the defaults, the same silver win is refused with a reason that says why and
    what to do; the champion stays; the candidate is the challenger."""
    import json
    import shutil

    import kadet.registry.register as register
    from kadet.kubeflow.steps import challenger_step, register_step

    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=silv",
                             f"data.data_dir={tiny_beir}"])
    assert cfg.register.silver_promotes is False
    ev = tmp_path / "ev"
    shutil.copytree(tiny_beir, ev / "silver")
    comp = {**comparison(m(0.90, 0.99), eval_data="sha256:silver-set"), "kind": "silver", "silver_dir": "silver",
            "delta": {"ndcg@10": {"mean": 0.2, "ci_low": 0.15, "ci_high": 0.25, "queries": 60, "confidence": 0.9}}}
    (ev / "comparison.json").write_text(json.dumps(comp))
    monkeypatch.setattr(register, "evaluate_model", lambda *a: pytest.fail("no champion: nothing to re-evaluate"))
    out = register_step(cfg, str(models[1]), str(ev), "silver-default")
    assert not out["promote"]
    assert out["reason"].startswith("silver evaluation cannot promote") and "kadet judge" in out["reason"]
    assert "register.silver_promotes: true" in out["reason"]
    challenger_step(cfg, out["version"], out["reason"], "silver-default")
    c = tracking.client(cfg)
    assert register.alias_version(c, "silv", "champion") is None
    assert str(register.alias_version(c, "silv", "challenger").version) == out["version"]
    assert "kadet judge" in c.get_model_version("silv", out["version"]).description   # the card says what to do


@pytest.mark.slow
def test_the_served_model_answers_with_query_embeddings(server, models, tmp_path):
    """Was: the pyfunc called ``encode()``, which sends a query-side model's queries through the
    *document* (base) tower, and the requirements pinned ``torch==...+cpu``. Now a POST to
    ``mlflow models serve`` answers with ``encode_query``'s embeddings (documents on request)."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from kadet.stages.distill import save_query_side_model
    from tests.doubles.servers import free_port, stop, wait_until_ready

    folder = tmp_path / "query-side"
    tuned = SentenceTransformer(str(models[1]), device="cpu")
    save_query_side_model(tuned, models[0], folder, 64)         # query tower differs from the document tower
    st = SentenceTransformer(str(folder), device="cpu")
    texts = ["does aspirin prevent heart attacks", "vitamin d and fractures"]
    assert not np.allclose(st.encode_query(texts), st.encode_document(texts), atol=1e-3)
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=served",
                             "register.confidence=0"])
    r = gate_run(cfg, folder, comparison(m(0.7)))
    uri = f"models:/served/{r.version}"
    mlflow.set_tracking_uri(server)
    reqs = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt", dst_path=str(tmp_path / "r"))).read_text()
    assert "torch==" in reqs and "+cpu" not in reqs
    pyfunc = mlflow.pyfunc.load_model(uri)
    np.testing.assert_allclose(pyfunc.predict(texts), st.encode_query(texts), atol=1e-5)
    np.testing.assert_allclose(pyfunc.predict(texts, params={"task": "document"}), st.encode_document(texts), atol=1e-5)

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server,                 # the scoring server runs uvicorn from the venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    exe = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(exe), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)

    def post(body):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return np.array(json.loads(resp.read())["predictions"])

    def ready():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
            return resp.status == 200

    try:
        wait_until_ready(proc, ready, "mlflow models serve", 120, lambda: (tmp_path / "serve.log").read_text()[-2000:])
        np.testing.assert_allclose(post({"inputs": texts}), st.encode_query(texts), atol=1e-5)
        np.testing.assert_allclose(post({"inputs": texts, "params": {"task": "document"}}),
                                   st.encode_document(texts), atol=1e-5)
    finally:
        stop(proc)
        log.close()


def test_a_report_that_cannot_be_written_never_costs_the_registration(server, models, tmp_path, monkeypatch):
    """Fault injection: the report fails; the version is registered and decided all the same,
    and the page the KFP run shows says why the report is missing."""
    import json

    import kadet.reporting.report
    from kadet.kubeflow.steps import register_step

    def broken(*a, **k):
        raise RuntimeError("matplotlib is gone")

    monkeypatch.setattr(kadet.reporting.report, "write_report", broken)
    cfg = load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path}", "register.model_name=no-report",
                             "register.confidence=0"])
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "comparison.json").write_text(json.dumps(comparison(m(0.7))))
    out = register_step(cfg, str(models[0]), str(tmp_path / "ev"), "no-report-run", str(tmp_path / "run_report"))
    assert out["promote"] and out["version"] == "1"
    assert "could not be written: RuntimeError: matplotlib is gone" in (tmp_path / "run_report").read_text()


def test_only_the_newest_gated_version_can_say_nothing_changed(tmp_path):
    """A run has nothing new only if the newest version that went through the gate was trained on
    the same inputs: a corpus that went back to an earlier state (A, A+B, then A again) is a change,
    and a version whose gate never finished (no inputs tag yet) does not block a rerun."""
    from kadet.stages.fingerprint import INPUTS_TAG
    from kadet.registry.register import trained_on

    cfg = load_config(None, [f"work_dir={tmp_path}", "register.model_name=lineage-test"])
    c = tracking.client(cfg)
    c.create_registered_model("lineage-test")
    for inputs in ("A", "A+B", ""):
        mv = c.create_model_version("lineage-test", str(tmp_path))
        if inputs:
            c.set_model_version_tag("lineage-test", mv.version, INPUTS_TAG, inputs)
    assert trained_on(cfg, "A+B") == "2"      # v3's gate did not finish: v2 is the newest gated one
    assert trained_on(cfg, "A") == ""         # A is what v1 saw, but v2 saw more since: retrain


@pytest.mark.parametrize("name", ["o'brien's model", 'o\'brien\'s "best" model'])
def test_a_model_name_with_quotes_finds_its_versions(tmp_path, name):
    """Was: the registry filter ``name = '{name}'`` was not escaped, so a name holding ``'`` found
    no version (or failed): duplicate detection (``find_version``) and "no change since"
    (``trained_on``) never fired. A name holding both quotes goes through LIKE; a look-alike name
    it would also match (``o_brien_s ...``) is never taken for it."""
    from kadet.registry.register import FINGERPRINT_TAG, find_version, model_versions, trained_on
    from kadet.stages.fingerprint import INPUTS_TAG

    cfg = load_config(None, [f"work_dir={tmp_path}"])
    cfg.register.model_name = name
    c = tracking.client(cfg)
    decoy = name.replace("'", "_").replace('"', "_")
    for model in (decoy, name):
        c.create_registered_model(model)
        mv = c.create_model_version(model, str(tmp_path), tags={FINGERPRINT_TAG: "fp-1", INPUTS_TAG: "A"})
    assert [v.name for v in model_versions(c, name)] == [name]
    assert str(find_version(c, name, "fp-1").version) == str(mv.version) == "1"
    assert trained_on(cfg, "A") == "1" and trained_on(cfg, "B") == ""
    first = tracking.parent_run_id(cfg, f"run {name}")
    assert tracking.parent_run_id(cfg, f"run {name}") == first != tracking.parent_run_id(cfg, f"run {decoy}")
