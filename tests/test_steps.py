"""How a pipeline step builds its config: YAML text, then the UI parameters (typed, any string)."""

from __future__ import annotations

import pytest

from kadet.errors import ConfigError
from kadet.steps import step_config


def test_ui_parameters_override_the_yaml_text_and_keep_their_types():
    cfg = step_config("distill: {lr: 2e-5, mode: full}\nprepare: {sample_size: 9}", work_dir="/cache",
                      data__data_dir="s3://bucket/a: b", prepare__sample_size=7, generate__types={"question": 1.0},
                      register__ndcg_floor=0.2, distill__mode="query", label__teacher="true", data__qrels="")
    assert cfg.data.data_dir == "s3://bucket/a: b" and cfg.prepare.sample_size == 7
    assert cfg.generate.types == {"question": 1.0} and cfg.register.ndcg_floor == 0.2
    assert cfg.distill.mode == "query" and cfg.distill.lr == 2e-5 and cfg.label.teacher == "true"
    assert cfg.data.qrels == "" and cfg.work_dir == "/cache"           # an empty parameter changes nothing


def test_bad_pipeline_config_names_the_key():
    with pytest.raises(ConfigError, match="pipeline config: unknown key 'distill.lrate'"):
        step_config("distill: {lrate: 1}")
    with pytest.raises(ConfigError, match="'prepare.sample_size'"):
        step_config("", prepare__sample_size="many")
