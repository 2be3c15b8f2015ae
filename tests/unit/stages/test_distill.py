"""The distillation trainer on a tiny randomly initialised model built here: resume equals an
uninterrupted run, both modes save a folder SentenceTransformer loads, the schedule."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from kadet.core.config import load_config
from kadet.registry.register import find_champion
from kadet.stages.distill import Distiller, distill, lr_factor
from kadet.core.io import write_jsonl
from kadet.core.manifest import Manifest
from tests.doubles.data import make_tiny_st


WORDS = "aspirin heart vitamin bone sleep obesity coffee liver gene protein cell cancer immune brain".split()


def _labels(path, n=24, lsize=6, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = WORDS[i % len(WORDS)]
        passages = [{"doc_id": f"d{i}-{j}", "text": f"{topic} {' '.join(rng.sample(WORDS, 4))} passage {j}",
                     "score": round(1.0 - j / lsize, 3)} for j in range(lsize)]
        rows.append({"qid": f"g{i}", "query": f"what about {topic} {i}", "type": "question",
                     "source_doc_id": passages[0]["doc_id"], "split": "dev" if i % 6 == 0 else "train",
                     "passages": passages})
    write_jsonl(path, rows)
    return path


def _cfg(tiny_st, tmp_path, *extra):
    return load_config(None, [f"retrieval.model={tiny_st}", f"work_dir={tmp_path / 'work'}", "distill.batch_size=8",
                              "distill.chunk_size=5", "distill.epochs=3", "distill.patience=5", "distill.lr=1e-3",
                              "distill.progress=false", "distill.passage_max_len=32", "distill.query_max_len=16",
                              *extra])


def _weights(path):
    from sentence_transformers import SentenceTransformer

    return {k: v.clone() for k, v in SentenceTransformer(str(path), device="cpu").state_dict().items()}


def test_lr_schedule():
    f = [lr_factor(s, warmup=2, total=10, final=0.1) for s in range(12)]
    assert f[:2] == [0.5, 1.0] and f[2] == 1.0
    assert f[10] == pytest.approx(0.1) and f[11] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))


def test_a_small_training_set_warms_up_over_at_least_min_warmup_steps():
    """Three steps per epoch: half an epoch of warm-up would reach the peak rate at step 2; with
    distill.min_warmup_steps=16 the rate climbs over 16 steps (then decays to the end)."""
    import torch

    from kadet.core.config import DistillConfig
    from kadet.stages.distill.optim import make_optimizer

    def rates(settings):
        opt, sched = make_optimizer([torch.nn.Parameter(torch.zeros(1))], settings, steps_per_epoch=3)
        out = []
        for _ in range(settings.epochs * 3):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    plain = rates(DistillConfig(lr=1e-4, epochs=10))
    assert plain[1] == pytest.approx(1e-4)
    slow = rates(DistillConfig(lr=1e-4, epochs=10, min_warmup_steps=16))
    assert slow[0] == pytest.approx(1e-4 / 16) and slow[2] == pytest.approx(3e-4 / 16)
    assert max(slow) == pytest.approx(1e-4) and slow.index(max(slow)) == 15


def test_resume_gives_the_same_weights(tiny_st, tmp_path):
    labels = _labels(tmp_path / "labels.jsonl")
    m = distill(_cfg(tiny_st, tmp_path), labels, tmp_path / "straight")
    assert m.counts["epochs"] == 3 and m.counts["train_queries"] == 20 and m.counts["dev_queries"] == 4
    # stop after one epoch, then a new process-like trainer resumes from the checkpoint
    first = distill(_cfg(tiny_st, tmp_path), labels, tmp_path / "resumed", max_epochs_this_run=1)
    assert first.counts["epochs"] == 1
    second = distill(_cfg(tiny_st, tmp_path), labels, tmp_path / "resumed")
    assert second.extra["resumed"] and second.counts["epochs"] == 3
    a, b = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "resumed" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    curves = json.loads((tmp_path / "resumed" / "curves.json").read_text())
    assert len(curves["dev_loss"]) == 3 and len(curves["train_loss"]) == 9
    assert curves == json.loads((tmp_path / "straight" / "curves.json").read_text())


def test_training_lowers_the_loss_and_model_round_trips(tiny_st, tmp_path):
    from sentence_transformers import SentenceTransformer

    labels = _labels(tmp_path / "labels.jsonl")
    cfg = _cfg(tiny_st, tmp_path, "distill.epochs=4")
    trainer = Distiller(cfg, labels, tmp_path / "out")
    before = trainer.dev_loss()
    trainer.train()
    assert trainer.state["best_dev"] < before
    model = SentenceTransformer(str(tmp_path / "out" / "model"), device="cpu")
    emb = model.encode(["what about aspirin 0", "aspirin passage"])
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_early_stopping(tiny_st, tmp_path):
    labels = _labels(tmp_path / "labels.jsonl")
    # a huge lr makes the dev loss worse after the first epoch
    m = distill(_cfg(tiny_st, tmp_path, "distill.lr=5", "distill.epochs=10", "distill.patience=2"), labels, tmp_path / "o")
    assert m.extra["stopped_early"] and m.counts["epochs"] < 10
    assert m.extra["best_epoch"] == m.counts["epochs"] - 2


def test_query_side_mode_freezes_documents(tiny_st, tmp_path):
    from sentence_transformers import SentenceTransformer

    labels = _labels(tmp_path / "labels.jsonl")
    m = distill(_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.epochs=2"), labels, tmp_path / "q")
    assert Manifest.read(tmp_path / "q").extra["mode"] == "query" and m.counts["epochs"] == 2
    tuned = SentenceTransformer(str(tmp_path / "q" / "model"), device="cpu")
    base = SentenceTransformer(str(tiny_st), device="cpu")
    docs = ["aspirin heart passage 1", "liver coffee passage 2"]
    # documents: exactly the base model (the existing index stays valid); queries: tuned
    np.testing.assert_allclose(tuned.encode_document(docs), base.encode(docs), atol=1e-6)
    assert not np.allclose(tuned.encode_query(["what about aspirin 0"]), base.encode(["what about aspirin 0"]), atol=1e-4)


def test_every_way_of_calling_a_query_side_model_gives_the_tuned_queries(tiny_st, tmp_path):
    """Was: ``SentenceTransformer(path).encode(queries)`` (what LangChain, LlamaIndex and most
    servers call) routed to the ``document`` tower, i.e. returned the *base* model's embeddings and
    silently dropped the whole gain. Now ``encode`` = ``encode_query`` = the tuned tower, and
    documents (``encode_document``) stay the base model's, so the index does not change."""
    from sentence_transformers import SentenceTransformer

    labels = _labels(tmp_path / "labels.jsonl")
    distill(_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.epochs=2"), labels, tmp_path / "q")
    tuned = SentenceTransformer(str(tmp_path / "q" / "model"), device="cpu")
    base = SentenceTransformer(str(tiny_st), device="cpu")
    queries, docs = ["what about aspirin 0", "what about liver 7"], ["aspirin heart passage 1", "liver coffee passage 2"]
    assert not np.allclose(tuned.encode_query(queries), base.encode(queries), atol=1e-4)       # training moved it
    np.testing.assert_allclose(tuned.encode(queries), tuned.encode_query(queries), atol=1e-6)  # was: == base
    np.testing.assert_allclose(tuned.encode_document(docs), base.encode(docs), atol=1e-6)
    assert tuned[0].default_route == "query"


def test_query_side_model_reuses_the_base_document_cache(tiny_st, tmp_path, monkeypatch):
    from kadet.kit.encode import Encoder

    labels = _labels(tmp_path / "labels.jsonl")
    distill(_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.epochs=1"), labels, tmp_path / "q")
    docs, queries = ["aspirin heart passage 1", "liver coffee passage 2"], ["what about aspirin 0"]
    base = Encoder(tiny_st, device="cpu", cache_dir=tmp_path / "cache")
    base_docs, base_q = base.encode(docs, "document"), base.encode(queries, "query")
    tuned = Encoder(tmp_path / "q" / "model", device="cpu", cache_dir=tmp_path / "cache")
    calls = []
    real_forward = tuned._forward
    monkeypatch.setattr(tuned, "_forward", lambda texts, *a: calls.append(list(texts)) or real_forward(texts, *a))
    np.testing.assert_array_equal(tuned.encode(docs, "document"), base_docs)   # served from the cache
    tuned_q = tuned.encode(queries, "query")                                    # the tuned tower runs
    assert calls == [queries] and not np.allclose(tuned_q, base_q, atol=1e-4)


def test_infonce_only_mode_runs(tiny_st, tmp_path):
    labels = _labels(tmp_path / "labels.jsonl")
    m = distill(_cfg(tiny_st, tmp_path, "distill.loss=infonce", "distill.epochs=1"), labels, tmp_path / "n")
    assert m.extra["loss"] == "infonce" and m.extra["best_dev_loss"] > 0


def test_base_weight_interpolates_every_weight_with_the_base(tiny_st, tmp_path):
    """WiSE-FT: base_weight w saves w x base + (1 - w) x tuned, weight by weight."""
    from kadet.stages.distill import interpolated
    from kadet.core.errors import KadetError

    labels = _labels(tmp_path / "labels.jsonl")
    cfg = _cfg(tiny_st, tmp_path, "distill.epochs=1", "distill.patience=5")
    trainer = Distiller(cfg, labels, tmp_path / "o")
    trainer.train()
    tuned = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    base = _weights(tiny_st)
    half = interpolated(trainer.model, trainer.base_path, 0.25).state_dict()
    name = next(k for k, v in tuned.items() if v.is_floating_point() and not torch.equal(v, base[k]))
    torch.testing.assert_close(half[name], 0.25 * base[name] + 0.75 * tuned[name])
    assert all(torch.equal(v, base[k]) for k, v in interpolated(trainer.model, trainer.base_path, 1.0).state_dict().items())
    with pytest.raises(KadetError, match="base_weight"):
        interpolated(trainer.model, trainer.base_path, 1.5)
    # the saved model (query side) carries the interpolated query tower
    cfg_w = _cfg(tiny_st, tmp_path, "distill.epochs=1", "distill.mode=query", "distill.base_weight=1.0")
    distill(cfg_w, labels, tmp_path / "w1")
    from sentence_transformers import SentenceTransformer

    saved = SentenceTransformer(str(tmp_path / "w1" / "model"), device="cpu")
    plain = SentenceTransformer(str(tiny_st), device="cpu")
    np.testing.assert_allclose(saved.encode_query(["what about aspirin 0"]), plain.encode(["what about aspirin 0"]),
                               atol=1e-5)


def test_auto_teacher_temp_matches_the_students_own_sharpness(tiny_st, tmp_path):
    """Teacher scores = 2 x the base student's cosines: softmax(t / T) equals the student's
    softmax(cos / 0.05) exactly at T = 0.1, so calibration must land there (grid step 12%)."""
    from sentence_transformers import SentenceTransformer

    path = _labels(tmp_path / "raw.jsonl")
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    st = SentenceTransformer(str(tiny_st), device="cpu")
    for r in rows:
        q = st.encode([r["query"]], normalize_embeddings=True)
        p = st.encode([x["text"] for x in r["passages"]], normalize_embeddings=True)
        for x, c in zip(r["passages"], (p @ q[0]).tolist()):
            x["score"] = 2 * c
    write_jsonl(tmp_path / "labels.jsonl", rows)
    cfg = _cfg(tiny_st, tmp_path, "distill.auto_teacher_temp=true", "distill.student_temp=0.05",
               "distill.mode=query", "distill.query_max_len=128", "distill.passage_max_len=128")
    trainer = Distiller(cfg, tmp_path / "labels.jsonl", tmp_path / "o")
    assert trainer.teacher_temp == pytest.approx(0.1, rel=0.07)
    assert Distiller(_cfg(tiny_st, tmp_path, "distill.mode=query"), tmp_path / "labels.jsonl",
                     tmp_path / "o2").teacher_temp == 0.3          # off: the configured value


def test_the_student_trains_without_dropout(tiny_st, tmp_path, monkeypatch):
    """Dropout is off in training (METHOD.md; GradCache replays no random state between its two
    passes): in train mode the student encodes the same text the same way twice. The tiny model
    has BERT's 0.1 dropout, so a student that kept it is refused before training."""
    from kadet.core.errors import KadetError

    labels = _labels(tmp_path / "labels.jsonl")
    trainer = Distiller(_cfg(tiny_st, tmp_path), labels, tmp_path / "o")
    assert all(m.p == 0.0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    trainer.model.train()
    with torch.no_grad():
        a, b = (trainer._encode(QUERIES, trainer.settings.query_max_len) for _ in range(2))
    assert torch.equal(a, b)
    monkeypatch.setattr("kadet.stages.distill.start.no_dropout", lambda model: None)
    with pytest.raises(KadetError, match="encodes randomly in train mode"):
        Distiller(_cfg(tiny_st, tmp_path), labels, tmp_path / "o")


def test_the_model_folder_carries_a_model_card(tiny_st, tmp_path):
    """sentence-transformers' card, with kadet's front matter and section: base model, towers,
    corpus fingerprint, training queries by type, teacher, loss and hyperparameters."""
    from kadet.stages.distill import card

    labels = _labels(tmp_path / "labels.jsonl")
    distill(_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.epochs=1"), labels, tmp_path / "q")
    text = (tmp_path / "q" / "model" / "README.md").read_text()
    meta, body = card.split_front_matter(text)
    assert meta["library_name"] == "sentence-transformers" and "kadet" in meta["tags"]
    assert body.count(card.START) == 1 and "### Full Model Architecture" in body         # ST's card kept
    assert f"**{tiny_st}**" in body and "query tower" in body and "encode_query" in body
    facts = card.read_facts(tmp_path / "q" / "model")
    n_train = sum(1 for line in open(labels) if '"split": "train"' in line)
    assert sum(facts["train_queries_by_type"].values()) == n_train and f"| **all** | {n_train} |" in body
    assert "| lr | `" in body and "Loss: listwise (listwise KL, teacher temperature" in body
    # register adds evaluation and version; rendering again replaces kadet's section, never duplicates it
    again = card.update(tmp_path / "q" / "model", evaluation={"kind": "silver", "queries": 7,
                        "base": {"nDCG@10": 0.5}, "candidate": {"nDCG@10": 0.6}}, registry={"name": "m", "version": "3"})
    text2 = again.read_text()
    assert text2.count(card.START) == 1 and "version **3**" in text2 and "**silver**" in text2
    assert card.split_front_matter(text2)[0]["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.6
    assert card.render(card.read_facts(again.parent), text2) == text2


# ---------------------------------------------------------------- warm start (distill.init)
# A champion registered through the real register path in a real MLflow sqlite store
# (<work_dir>/mlflow.db, as a local run has it); tiny models, so this is plumbing, not quality.

QUERIES = ["what about aspirin 0", "what about liver 7"]
DOCS = ["aspirin heart passage 1", "liver coffee passage 2"]


def _store_cfg(tiny_st, tmp_path, *extra):
    """Training settings plus a registry in ``tmp_path/work`` where every gate passes at once."""
    return _cfg(tiny_st, tmp_path, "distill.epochs=1", "register.confidence=0", "register.ndcg_floor=0",
                "register.promote_settle_s=0", *extra)


def _make_champion(cfg, model_dir, comparison) -> str:
    """Register ``model_dir`` the way the register and promote steps do; returns its version."""
    from kadet.registry import tracking
    from kadet.kit.comparison import Comparison
    from kadet.registry.promotion import promote
    from kadet.registry.register import register_candidate

    with tracking.stage_run(cfg, "register", pipeline_run="champion-run"):
        r = register_candidate(cfg, model_dir, Comparison.from_json(comparison), "champion-run")
    assert r.decision.promote and promote(cfg, r.version).promote, r.decision.reason
    import mlflow

    mlflow.set_tracking_uri(None)        # the stage run made this store the process default: undo it,
    mlflow.set_registry_uri(None)        # so a later config finds its own store (or none)
    return r.version


def _comparison(tiny_st, eval_data="sha256:elsewhere"):
    return {"eval_data": eval_data, "candidate": {"ndcg@10": 0.9, "recall@100": 1.0},
            "base": {"ndcg@10": 0.5, "recall@100": 1.0}, "models": {"base": str(tiny_st)}}


@pytest.fixture(scope="module")
def query_champion(tiny_st, tmp_path_factory):
    """A query-side model trained here (2 epochs) and registered as champion v1 of its own store."""
    root = tmp_path_factory.mktemp("champion")
    labels = _labels(root / "labels.jsonl")
    cfg = _store_cfg(tiny_st, root, "distill.mode=query", "distill.epochs=2")
    distill(cfg, labels, root / "trained")
    version = _make_champion(cfg, root / "trained" / "model", _comparison(tiny_st))
    return {"root": root, "labels": labels, "model": root / "trained" / "model", "version": version}


def _student_queries(trainer):
    with torch.no_grad():
        trainer.model.eval()
        return trainer._encode(QUERIES, trainer.settings.query_max_len).cpu().numpy()


def test_warm_start_begins_from_the_champions_query_tower(tiny_st, query_champion, tmp_path):
    """Before any step the student's query embeddings are the champion's (not the base's); the
    document side stays the base model, in the cached embeddings it trains against and in the
    saved model; the manifest and the distill run's tags say where it started."""
    from sentence_transformers import SentenceTransformer

    root = query_champion["root"]
    cfg = _store_cfg(tiny_st, root, "distill.mode=query", "distill.init=champion")
    champion = SentenceTransformer(str(query_champion["model"]), device="cpu")
    base = SentenceTransformer(str(tiny_st), device="cpu")
    trainer = Distiller(cfg, query_champion["labels"], tmp_path / "probe", find_champion=find_champion)
    assert trainer.init.source == "champion" and trainer.init.version == query_champion["version"] == "1"
    start = _student_queries(trainer)
    np.testing.assert_allclose(start, champion.encode_query(QUERIES), atol=1e-5)
    assert not np.allclose(start, base.encode(QUERIES), atol=1e-3)
    data = trainer.data
    ids = [data.doc_index[d] for d in sorted(data.doc_index)[:5]]
    np.testing.assert_allclose(trainer.doc_emb[ids].cpu().numpy(),
                               base.encode([data.doc_text[d] for d in sorted(data.doc_index)[:5]]), atol=1e-5)
    trainer.init.close()

    from kadet.registry import tracking
    from kadet.kubeflow.steps import distill_step

    out = tmp_path / "warm"
    distill_step(cfg, str(query_champion["labels"]), str(out), "warm-run")
    assert Manifest.read(out).extra["init"] == {"from": "champion", "version": 1}
    tuned = SentenceTransformer(str(out / "model"), device="cpu")
    np.testing.assert_allclose(tuned.encode_document(DOCS), base.encode(DOCS), atol=1e-6)   # the index stays valid
    assert not np.allclose(tuned.encode_query(QUERIES), champion.encode_query(QUERIES), atol=1e-4)  # it trained
    runs = tracking.client(cfg).search_runs([tracking.experiment_id(cfg)],
                                            filter_string="tags.`kadet.pipeline_run` = 'warm-run'")
    tags = next(r for r in runs if r.info.run_name == "distill").data.tags
    assert tags["kadet.init_from"] == "champion" and tags["kadet.init_version"] == "1"
    assert not list(cfg.cache_dir.glob("init-*"))                     # the extracted tower is cleaned up


def test_no_usable_champion_falls_back_to_the_base_model_and_says_why(tiny_st, query_champion, tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    labels = query_champion["labels"]
    base_q = SentenceTransformer(str(tiny_st), device="cpu").encode(QUERIES)
    cases = [  # (settings, where the reason must say it)
        (_store_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.init=champion"), "no MLflow store at sqlite:///"),
        (_store_cfg(tiny_st, query_champion["root"], "distill.mode=query", "distill.init=champion",
                    "register.model_name=never-registered"), "never-registered has no 'champion' version yet"),
        (_store_cfg(tiny_st, query_champion["root"], "distill.mode=full", "distill.init=champion"),
         "champion v1 is a query-mode model and distill.mode is full"),
    ]
    for cfg, reason in cases:
        trainer = Distiller(cfg, labels, tmp_path / "probe", find_champion=find_champion)
        assert trainer.init.source == "base" and reason in trainer.init.reason, trainer.init.reason
        np.testing.assert_allclose(_student_queries(trainer), base_q, atol=1e-5)
        assert reason in caplog.text and "starting from the base model" in caplog.text
    m = distill(cases[1][0], labels, tmp_path / "fallback", find_champion=find_champion)
    assert m.extra["init"]["from"] == "base" and m.extra["init"]["version"] is None
    assert "has no 'champion' version yet" in m.extra["init"]["reason"]
    plain = distill(_store_cfg(tiny_st, tmp_path, "distill.mode=query"), labels, tmp_path / "plain")
    assert plain.extra["init"] == {"from": "base", "version": None}            # the default: distill.init base


def test_a_champion_trained_from_another_base_model_is_not_a_start(tiny_st, query_champion, tmp_path):
    other = make_tiny_st(tmp_path / "other", seed=7)
    cfg = _store_cfg(other, query_champion["root"], "distill.mode=query", "distill.init=champion")
    trainer = Distiller(cfg, query_champion["labels"], tmp_path / "probe", find_champion=find_champion)
    assert trainer.init.source == "base" and f"trained from {tiny_st}" in trainer.init.reason


def test_warm_start_from_a_full_mode_champion_takes_the_whole_model(tiny_st, tmp_path):
    labels = _labels(tmp_path / "labels.jsonl")
    cfg = _store_cfg(tiny_st, tmp_path, "distill.mode=full", "distill.epochs=2")
    distill(cfg, labels, tmp_path / "trained", find_champion=find_champion)
    _make_champion(cfg, tmp_path / "trained" / "model", _comparison(tiny_st))
    cfg.distill.init = "champion"
    trainer = Distiller(cfg, labels, tmp_path / "probe", find_champion=find_champion)
    assert trainer.init.source == "champion" and trainer.init.version == "1"
    champion = _weights(tmp_path / "trained" / "model")
    start = trainer.model.state_dict()
    assert champion.keys() == start.keys() and all(torch.equal(champion[k], start[k]) for k in champion)


def test_the_gate_measures_a_warm_started_candidate_against_its_champion_on_this_data(
        tiny_st, query_champion, tmp_path, tiny_beir):
    """The champion's metrics were recorded on other test data (the corpus has grown since): the
    register step evaluates the champion again on this run's data and compares on that."""
    from kadet.registry import tracking
    from kadet.stages.evaluate import compare, evaluate
    from kadet.registry.register import register_candidate

    cfg = _store_cfg(tiny_st, query_champion["root"], "distill.mode=query", "distill.init=champion",
                     f"data.data_dir={tiny_beir}")
    distill(cfg, query_champion["labels"], tmp_path / "warm", find_champion=find_champion)
    comparison = compare(cfg, str(tmp_path / "warm" / "model"), tmp_path / "ev")
    assert comparison.models["base"] == str(tiny_st)                     # evaluate still reports base vs candidate
    champion_here = evaluate(cfg, model=str(query_champion["model"]), retriever="dense").metrics
    with tracking.stage_run(cfg, "register", pipeline_run="warm-gate"):
        r = register_candidate(cfg, tmp_path / "warm" / "model", comparison, "warm-gate")
    assert r.decision.incumbent == "champion v1 (re-evaluated)"
    assert r.incumbent_metrics == pytest.approx({k: champion_here[k] for k in ("ndcg@10", "recall@100")})
    assert r.incumbent_metrics != pytest.approx(_comparison(tiny_st)["candidate"])   # not the tags from elsewhere


def test_a_champion_start_without_a_registry_falls_back_to_the_base_and_says_why(tiny_st, tmp_path):
    """The stage knows no registry: whoever runs it hands it one (the pipeline's step, the CLI, the
    Trainer job's worker); a caller that does not is told, and training starts from the base."""
    labels = _labels(tmp_path / "labels.jsonl")
    trainer = Distiller(_cfg(tiny_st, tmp_path, "distill.init=champion"), labels, tmp_path / "o")
    assert trainer.init.source == "base" and "no registry" in trainer.init.reason
    trainer.ranks.close()


def test_a_query_side_run_prints_no_max_seq_lengths_warning(tiny_st, tmp_path, caplog):
    """Was: the README's main job printed sentence-transformers' "Different max_seq_lengths
    detected: {64, 256}" as the second line of its console: ``kadet run``'s plan times distill's
    save (kadet/tools/plan.py ``time_distill``), a query-side Router whose towers have different
    lengths on purpose (query_max_len, passage_max_len), and the model card sentence-transformers
    writes on save asks the Router for one length (so did the encoder). Now the encoder takes its
    route's own length and that one message is filtered; the Router's other warnings are not."""
    import logging

    from kadet.kit.encode import Encoder
    from kadet.kit.towers import ROUTER_LOGGER

    logging.Logger.warning_once.cache_clear()          # transformers' warning_once: once per process
    labels = _labels(tmp_path / "labels.jsonl")
    with caplog.at_level(logging.WARNING):
        distill(_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.epochs=1"), labels, tmp_path / "q")
        enc = Encoder(tmp_path / "q" / "model", device="cpu")
        enc.encode(["what about aspirin 0"], "query"), enc.encode(["aspirin heart passage 1"], "document")
        assert (enc.route_max_tokens("query"), enc.route_max_tokens("document")) == (16, 64)   # they differ
        logging.getLogger(ROUTER_LOGGER).warning("another Router warning")
    assert "max_seq_lengths" not in caplog.text and "another Router warning" in caplog.text
