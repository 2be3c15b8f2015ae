"""How a pipeline run builds its config: the profile, the YAML text, then the run parameters by
path (typed, any string), once; each task reads it back frozen."""

from __future__ import annotations

import pytest

from kadet.core.config import resolve_config
from kadet.core.errors import ConfigError
from kadet.kubeflow.steps import config_step, step_config


def test_run_parameters_override_the_yaml_text_and_keep_their_types():
    """A string parameter stays a string whatever it holds (": ", a number's spelling): it is set
    by path as a value, never written into YAML text and parsed back."""
    text = config_step({"config_yaml": "distill: {lr: 2e-5, mode: full}\nprepare: {sample_size: 9}",
                        "work_dir": "/cache", "data_uri": "s3://bucket/a: b", "sample_size": 7,
                        "query_types": {"question": 1.0}, "ndcg_floor": 0.2, "training_mode": "query",
                        "teacher": "cross-encoder:/models/1e-5", "eval_qrels_uri": ""})
    cfg = step_config(text)
    assert cfg.data.data_dir == "s3://bucket/a: b" and cfg.prepare.sample_size == 7
    assert cfg.generate.types == {"question": 1.0} and cfg.register.ndcg_floor == 0.2
    assert cfg.distill.mode == "query" and cfg.distill.lr == 2e-5 and cfg.label.teacher == "cross-encoder:/models/1e-5"
    assert cfg.data.qrels == "" and cfg.work_dir == "/cache"           # an empty parameter changes nothing


def test_bad_pipeline_config_names_the_key():
    with pytest.raises(ConfigError, match="pipeline config: unknown key 'distill.lrate'"):
        resolve_config("", "distill: {lrate: 1}")
    with pytest.raises(ConfigError, match="'prepare.sample_size' = 'many' must be int"):
        config_step({"sample_size": "many"})


def test_a_retried_label_task_goes_on_where_the_failed_try_stopped(tmp_path, monkeypatch):
    """Was: the resumable score log lived in the task's output folder, which a retry (a new pod)
    gets empty, so a retried shard started over. Now it lives under the work dir (the cache PVC)
    per pipeline run and shard; the failed try is killed after one flush (fault injection)."""
    from kadet.core.config import load_config
    from kadet.core.journal import Journal, read_log
    from kadet.stages.label.stage import shard_file
    from kadet.kubeflow.steps import label_step
    from tests.unit.stages.test_label import _stage_inputs

    _stage_inputs(tmp_path)
    cfg = load_config(None, [f"work_dir={tmp_path / 'work'}", "label.teacher=bm25", "label.flush_every=4",
                             "label.num_shards=1", "tracking.experiment=retry"])
    real_append, calls = Journal.append, []

    def dies_after_one_flush(journal, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt("pod killed (injected)")
        return real_append(journal, rows)

    monkeypatch.setattr(Journal, "append", dies_after_one_flush)
    with pytest.raises(KeyboardInterrupt):
        label_step(cfg, str(tmp_path / "candidates.jsonl"), str(tmp_path / "corpus.jsonl"), str(tmp_path / "try1"),
                   "run-7")
    monkeypatch.setattr(Journal, "append", real_append)
    counts = label_step(cfg, str(tmp_path / "candidates.jsonl"), str(tmp_path / "corpus.jsonl"),
                        str(tmp_path / "try2"), "run-7")                      # a new pod: a new, empty output folder
    assert counts["scored_now"] == 12 - 4                                     # only what the failed try had not
    assert len(read_log(shard_file(tmp_path / "try2", 0, 1))) == 12
    assert not (tmp_path / "work" / "resume" / "run-7" / "label-0-of-1").exists()    # cleaned up after success


def test_a_kept_stage_output_is_reused_only_for_the_same_inputs_settings_and_model_files(tmp_path, tiny_st,
                                                                                           monkeypatch):
    """``reusable``: the second identical call takes the first one's output (and tags its run);
    changed input content, a changed setting or a model folder whose files changed under the same
    path means the stage runs again."""
    import dataclasses
    import shutil

    import mlflow

    from kadet.core.config import KadetConfig
    from kadet.core.layout import RUN_KEY_ENV
    from kadet.kubeflow.steps import REUSED_TAG, reusable, setting_contents

    model = shutil.copytree(tiny_st, tmp_path / "model")
    cfg = KadetConfig(work_dir=str(tmp_path / "work"))
    cfg = dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, model=str(model)))
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "queries.jsonl").write_text('{"qid": "q1", "text": "a"}\n')
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    calls = []

    def step(key: str, cfg) -> bool:
        monkeypatch.setenv(RUN_KEY_ENV, key)
        out = tmp_path / "out" / key
        with mlflow.start_run() as run, reusable(cfg, "mine", str(out), {"queries": str(queries)}) as reused:
            if not reused:
                calls.append(key)
                out.mkdir(parents=True)
                (out / "manifest.json").write_text("{}")
        return reused, mlflow.get_run(run.info.run_id).data.tags.get(REUSED_TAG)

    assert step("r1", cfg) == (False, None)
    assert step("r2", cfg) == (True, "r1")
    (queries / "queries.jsonl").write_text('{"qid": "q1", "text": "b"}\n')            # the input's content
    assert step("r3", cfg) == (False, None)
    other = dataclasses.replace(cfg, mine=dataclasses.replace(cfg.mine, min_candidates=cfg.mine.min_candidates + 1))
    assert step("r4", other) == (False, None)                                            # a setting
    before = setting_contents(cfg)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)                           # the model's files, same path
    assert setting_contents(cfg)["retrieval.model"] != before["retrieval.model"]
    assert step("r5", cfg) == (False, None)
    assert calls == ["r1", "r3", "r4", "r5"]
    assert "work_dir" not in before and not any(k.startswith("data.") for k in before)
