"""The KFP pipeline: the committed IR YAML is current and the DAG has its control flow (the real DAG's
local runs: tests/system/test_pipeline.py)."""

from __future__ import annotations

import pytest
import yaml

from kadet.core.errors import KadetError
from kadet.kubeflow.compile import DEFAULT_OUTPUT, stale_diff

UI_PARAMETERS = {"data_uri", "eval_qrels_uri", "query_types", "sample_size", "teacher", "label_list_size",
                 "train_list_size", "training_mode",
                 "ndcg_floor", "min_delta", "max_recall_drop", "model_name", "generate_shards", "label_shards",
                 "profile"}


#: How a task takes the resolved config: from the config task, or passed down into a group (If, ParallelFor).
FROM_CONFIG_TASK = {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "config"}}
THROUGH_A_GROUP = {"componentInputParameter": "pipelinechannel--config-Output"}


def test_compiled_yaml_is_current():
    diff = stale_diff()
    assert not diff, "kadet/kubeflow/kadet_pipeline.yaml is stale: run `python -m kadet.kubeflow.compile`\n" + "\n".join(diff[:40])


def test_stale_yaml_is_detected(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(DEFAULT_OUTPUT.read_text().replace("/var/cache/kadet", "other-name"))
    assert any("other-name" in line for line in stale_diff(old))


@pytest.fixture(scope="module")
def compiled():
    """The committed YAML: the pipeline spec, then the kubernetes platform spec."""
    return list(yaml.safe_load_all(DEFAULT_OUTPUT.read_text()))


def test_ui_parameters_left_at_their_defaults_leave_the_settings_to_profile_and_config_yaml(compiled):
    """Was: every UI parameter had a CPU-profile default, so it always overrode config_yaml
    (``config_yaml: "distill: {mode: full}"`` trained query-side, a cluster run started from
    sample_size 200)."""
    from kadet.kubeflow.steps import config_step, step_config

    root = compiled[0]["root"]["inputDefinitions"]["parameters"]
    d = {name: p.get("defaultValue") for name, p in root.items()}
    assert d["profile"] == "gpu"
    # what the first task does with the run's parameters left at their defaults
    cfg = step_config(config_step({**d, "data_uri": "s3://kadet/c",
                                   "config_yaml": "distill: {mode: full}\nregister: {ndcg_floor: 0.3}"}))
    assert cfg.distill.mode == "full" and cfg.register.ndcg_floor == 0.3      # config_yaml decides
    assert cfg.prepare.sample_size == 100_000 and cfg.generate.backend == "tgi"   # then the gpu profile
    assert cfg.register.model_name == "kadet-embedding" and cfg.label.list_size == 20   # then kadet's defaults
    assert cfg.distill.list_size == 20 and cfg.work_dir == "/var/cache/kadet" and cfg.data.data_dir == "s3://kadet/c"
    set_in_ui = step_config(config_step({**d, "data_uri": "s3://kadet/c", "config_yaml": "distill: {mode: full}",
                                         "training_mode": "query", "sample_size": 0, "train_list_size": 8}))
    assert set_in_ui.distill.mode == "query" and set_in_ui.prepare.sample_size == 0   # a set parameter wins
    assert set_in_ui.distill.list_size == 8 and set_in_ui.label.list_size == 20        # one setting each


def test_every_task_reads_the_one_resolved_config_frozen(compiled):
    """The first task resolves the config once; each other task takes it as ``config`` and reads
    it back frozen (a step cannot change what the others see), with its shard set by path."""
    from kadet.core.config import FrozenConfigError
    from kadet.kubeflow.steps import config_step, step_config

    text = config_step({"data_uri": "/data", "profile": "local", "config_yaml": "seed: 7", "ndcg_floor": 0.4})
    cfg = step_config(text)
    assert cfg.seed == 7 and cfg.register.ndcg_floor == 0.4 and cfg.data.data_dir == "/data"
    with pytest.raises(FrozenConfigError, match="cannot set RegisterConfig.ndcg_floor"):
        cfg.register.ndcg_floor = 0.1
    shard = step_config(text, {"label.shard_index": 1, "label.num_shards": 2})
    assert (shard.label.shard_index, shard.label.num_shards) == (1, 2) and shard.hash() != cfg.hash()
    spec = compiled[0]
    tasks = {n: t for n, t in all_tasks(spec).items() if "dag" not in spec["components"][t["componentRef"]["name"]]}
    fed = {n for n, t in tasks.items()
           if t.get("inputs", {}).get("parameters", {}).get("config") in (FROM_CONFIG_TASK, THROUGH_A_GROUP)}
    # every kadet task but the resolver itself, the exit handler (KFP gives it no task's output) and shard lists
    assert fed == set(tasks) - {"config", "finish", "shard-indices", "shard-indices-2"}, sorted(set(tasks) - fed)


@pytest.fixture(scope="module")
def spec(compiled):
    return compiled[0]


def all_tasks(spec) -> dict:
    """Every task of the pipeline, nested DAGs (ExitHandler, ParallelFor, If/Else) flattened."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_the_run_page_is_readable_and_failed_data_tasks_are_retried(spec):
    """Was: raw task names, no parameter descriptions, no retry (a retried task would have started
    over anyway: tests/test_steps.py checks that it now resumes)."""
    tasks = all_tasks(spec)
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {"1 prepare corpus", "3 mine candidates", "5 distill", "7 register and gate", "7 promote to champion"} <= names
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in params.values()), [n for n, p in params.items() if not p.get("description")]
    retried = {n for n, t in tasks.items() if t.get("retryPolicy", {}).get("maxRetryCount") == 2}
    assert {"prepare", "generate", "mine", "label", "distill", "evaluate"} <= retried
    # the registry steps too: a retry finds its version by fingerprint and promotes compare-and-set,
    # and the inputs fingerprint is written last (tests/unit/registry/test_promotion.py)
    assert {"fingerprint", "register", "promote", "challenger"} <= retried


def test_no_task_takes_the_run_id_so_unchanged_steps_are_cached_across_runs(compiled):
    """Was: every task took the run id as an input, so its cache key changed with every run and
    no step was ever reused. Now each pod reads its run's key from its own labels (the Argo
    workflow, one per run). The containers run as the image's user (USER 10001); the
    securityContext field is opt-in (it needs KFP >= 2.16)."""
    from kadet.registry.tracking import RUN_KEY_ENV

    spec, platform = compiled
    assert "pipeline_job_uuid" not in yaml.safe_dump(spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, ex in executors.items():
        assert {"name": RUN_KEY_ENV, "fieldPath": "metadata.labels['workflows.argoproj.io/workflow']"} in \
            ex.get("fieldPathAsEnv", []), name
        assert "securityContext" not in ex, name   # opt-in (KFP >= 2.16): tests/deploy/test_remote.py


def test_a_task_finds_its_run_key_in_the_environment(tmp_path, monkeypatch):
    from kadet.registry import tracking
    from kadet.core.config import load_config

    cfg = load_config(None, [f"work_dir={tmp_path}"])
    monkeypatch.delenv(tracking.RUN_KEY_ENV, raising=False)
    with pytest.raises(KadetError, match="no pipeline run key"):
        tracking.parent_run_id(cfg, "")
    monkeypatch.setenv(tracking.RUN_KEY_ENV, "kadet-x7k2p")
    with tracking.stage_run(cfg, "prepare", ""):
        pass
    assert tracking.parent_run_id(cfg, "") == tracking.parent_run_id(cfg, "kadet-x7k2p")


def test_every_run_parameter_is_in_the_one_table(spec):
    """The pipeline's run parameters, their defaults and descriptions are
    kadet/kubeflow/parameters.py's table; each sets at most one real setting; the component that
    resolves the config takes exactly the table's config inputs, and no other component takes a
    run parameter that sets a setting (they read the resolved config)."""
    import inspect

    from kadet.core.config import KadetConfig, get_path
    from kadet.kubeflow import components
    from kadet.kubeflow.parameters import BY_NAME, CONFIG_INPUTS, PARAMETERS

    root = spec["root"]["inputDefinitions"]["parameters"]
    assert set(root) == set(BY_NAME) == UI_PARAMETERS | {"config_yaml", "work_dir"}
    for p in PARAMETERS:
        assert root[p.name]["description"] == p.help.replace("\n", " ")
        assert root[p.name].get("defaultValue", None) == p.default, p.name
        if p.setting:
            get_path(KadetConfig(), p.setting)          # a real setting (raises if not)
    assert list(inspect.signature(components.config).parameters) == list(CONFIG_INPUTS)
    setting_params = {p.name for p in PARAMETERS if p.setting} - {"work_dir"}
    for name in components.NAMES:
        if name != "config":
            fn = getattr(components, name)
            assert not set(inspect.signature(fn).parameters) & setting_params, name


def test_a_parameter_of_the_old_pipeline_names_its_replacement():
    from kadet.core.errors import ConfigError
    from kadet.kubeflow.remote import parse_params

    with pytest.raises(ConfigError, match="'list_size' is gone: pass label_list_size .* and train_list_size"):
        parse_params(["list_size=30"], "s3://kadet/c")
    with pytest.raises(ConfigError, match="unknown pipeline parameter 'ndcg' .known: data_uri, eval_qrels_uri"):
        parse_params(["ndcg=0.3"], "s3://kadet/c")
    assert parse_params(["label_list_size=30"], "s3://kadet/c") == {"label_list_size": 30, "data_uri": "s3://kadet/c"}


def test_dag_shape(spec):
    root = spec["root"]
    assert UI_PARAMETERS <= set(root["inputDefinitions"]["parameters"])
    # everything runs inside an ExitHandler whose exit task closes the MLflow parent run
    assert set(root["dag"]["tasks"]) == {"config", "exit-handler-1", "finish"}   # config: resolves the run's config
    assert root["dag"]["tasks"]["finish"]["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    tasks = all_tasks(spec)
    loops = {name: t for name, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 2                                            # sharded generation and labelling
    bodies = [spec["components"][t["componentRef"]["name"]]["dag"]["tasks"] for t in loops.values()]
    assert sorted(next(iter(b)) for b in bodies) == ["generate", "label"]
    conditions = sorted(t["triggerPolicy"]["condition"] for t in tasks.values() if "condition" in t.get("triggerPolicy", {}))
    assert any("== 'promote'" in c for c in conditions) and any("!(" in c for c in conditions)   # If / Else
    for stage in ("prepare", "mine", "label-merge", "distill", "evaluate"):
        assert tasks[stage]["cachingOptions"] == {"enableCache": True}
    for step in ("fingerprint", "unchanged", "nothing-to-learn", "register", "promote", "challenger"):
        assert tasks[step]["cachingOptions"] == {}, step           # registry or corpus state: never cached
    executors = spec["deploymentSpec"]["executors"]
    gpu = {"exec-preflight", "exec-label", "exec-distill"}           # generate calls the TGI server
    assert {n: e["container"]["image"] for n, e in executors.items()} == {
        n: "ghcr.io/kadet-ml/kadet:0.1.0-cuda" if n in gpu else "ghcr.io/kadet-ml/kadet:0.1.0-cpu" for n in executors}
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors.values())


def test_a_grown_corpus_at_the_same_address_is_not_served_from_the_cache(spec):
    """Was: prepare's only corpus input was its address (``data_uri``), so a weekly run over a
    grown ``s3://.../docs`` took last week's cached prepare and everything after it. Now an
    uncached fingerprint task reads what the address holds and prepare takes that digest as an
    input: new content, new cache key for prepare and all that depends on it. Unchanged inputs
    (a version already trained on them) take the other branch and train nothing."""
    tasks = all_tasks(spec)
    fp = tasks["fingerprint"]
    assert fp["cachingOptions"] == {} and fp["inputs"]["parameters"]["config"] == THROUGH_A_GROUP   # data_uri in it
    branches = {t["triggerPolicy"]["condition"]: name for name, t in tasks.items()
                if "fingerprint" in t.get("triggerPolicy", {}).get("condition", "")}
    assert len(branches) == 2                                         # nothing new / new content or settings
    train = next(spec["components"][tasks[n]["componentRef"]["name"]] for c, n in branches.items() if c.startswith("!("))
    # the training branch receives the fingerprint task's digests, and prepare keys on them
    got = train["inputDefinitions"]["parameters"]
    assert {"pipelinechannel--fingerprint-corpus", "pipelinechannel--fingerprint-inputs"} <= set(got)
    prep = tasks["prepare"]["inputs"]["parameters"]
    assert prep["corpus_fingerprint"] == {"componentInputParameter": "pipelinechannel--fingerprint-corpus"}
    assert prep["inputs_fingerprint"] == {"componentInputParameter": "pipelinechannel--fingerprint-inputs"}
    assert tasks["prepare"]["cachingOptions"] == {"enableCache": True}
    same = next(spec["components"][tasks[n]["componentRef"]["name"]] for c, n in branches.items() if not c.startswith("!("))
    assert set(same["dag"]["tasks"]) == {"unchanged"}


def test_the_training_branch_runs_only_when_the_preflight_check_found_something_to_learn(spec):
    """Was: every run distilled whatever the teacher knew. Now a pre-flight task (kadet/stages/preflight.py)
    runs first in the new-content branch; training is conditioned on its ``go`` flag and the
    other branch only records why (never cached: it writes to the registry's parent run)."""
    tasks = all_tasks(spec)
    assert tasks["preflight"]["cachingOptions"] == {}           # its figures go on every run's MLflow page
    assert tasks["preflight"]["retryPolicy"]["maxRetryCount"] == 2
    assert set(tasks["preflight"]["inputs"]["parameters"]) == {"config", "corpus_fingerprint", "pipeline_run"}
    conds = {name: t["triggerPolicy"]["condition"] for name, t in tasks.items()
             if "preflight-go" in t.get("triggerPolicy", {}).get("condition", "")}
    assert len(conds) == 2
    go = next(spec["components"][tasks[n]["componentRef"]["name"]] for n, c in conds.items() if not c.startswith("!("))
    stop = next(spec["components"][tasks[n]["componentRef"]["name"]] for n, c in conds.items() if c.startswith("!("))
    assert "prepare" in go["dag"]["tasks"] and set(stop["dag"]["tasks"]) == {"nothing-to-learn"}


def test_the_image_is_a_setting(tmp_path):
    from kadet.kubeflow.compile import compile_pipeline

    out = compile_pipeline(tmp_path / "p.yaml", base_image="registry.example.com/kadet:test",
                           gpu_image="registry.example.com/kadet:test-cuda")
    images = {e["container"]["image"]
              for e in next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/kadet:test", "registry.example.com/kadet:test-cuda"}


def test_compiled_yaml_carries_the_platform_settings(spec, compiled):
    from kadet.kubeflow.platform import Platform

    plat = Platform.load()
    executors = spec["deploymentSpec"]["executors"]
    k8s = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in executors:
        step = name.removeprefix("exec-").replace("-", "_").removesuffix("_2")
        container, kube = executors[name]["container"], k8s[name]
        gpu = container["resources"].get("accelerator")
        if step in ("preflight", "label", "distill"):  # not generate: it calls the TGI server (was: held a GPU)
            assert gpu == {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"}
            assert kube["nodeSelector"] == {"labels": plat.gpu_node_selector}
            assert kube["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
            assert kube["emptyDirMounts"][0]["mountPath"] == "/dev/shm" and kube["emptyDirMounts"][0]["medium"] == "Memory"
        else:
            assert gpu is None and "nodeSelector" not in kube
        assert kube["pvcMount"][0]["constant"] == "kadet-model-cache"
        assert kube["pvcMount"][0]["mountPath"] == "/var/cache/kadet"
        secrets = {s["secretName"]: {e["secretKey"]: e["envVar"] for e in s["keyToEnv"]} for s in kube["secretAsEnv"]}
        assert secrets["kadet-minio"] == {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.") and "AWS_SECRET_ACCESS_KEY" not in env
        assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryLimit"]
    assert spec["root"]["inputDefinitions"]["parameters"]["work_dir"]["defaultValue"] == plat.cache_mount


def _outputs(spec, task: dict) -> dict:
    """``{output name: schema title}`` of a task's component."""
    arts = spec["components"][task["componentRef"]["name"]].get("outputDefinitions", {}).get("artifacts", {})
    return {name: a["artifactType"]["schemaTitle"] for name, a in arts.items()}


def test_every_branch_says_on_the_run_page_what_was_decided(spec):
    """Was: the gate's and the pre-flight's figures lived only in MLflow, and the "no change" and
    "nothing to learn" branches emitted no artifact (a green, empty run page). Now the last task of
    every branch has a Markdown summary, and the pre-flight and gate tasks have Metrics."""
    tasks = all_tasks(spec)
    branches = {"nothing-new": "unchanged", "nothing-to-learn": "nothing-to-learn", "gate-passed": "promote",
                "gate-failed": "challenger"}
    for branch, task in branches.items():
        group = next(t for t in tasks.values() if t["taskInfo"]["name"] == branch)
        body = spec["components"][group["componentRef"]["name"]]["dag"]["tasks"]
        assert task in body, (branch, sorted(body))
        assert _outputs(spec, body[task]).get("summary") == "system.Markdown", branch
    assert _outputs(spec, tasks["preflight"])["figures"] == "system.Metrics"
    assert _outputs(spec, tasks["register"]) == {"run_report": "system.HTML", "figures": "system.Metrics",
                                                 "summary": "system.Markdown"}
    # promote and challenger build on the register task's decision (its Markdown), nothing to learn on the pre-flight's
    for task in ("promote", "challenger"):
        got = tasks[task]["inputs"]["artifacts"]["gate"]
        assert "summary" in yaml.safe_dump(got), got
    assert "report" in yaml.safe_dump(tasks["nothing-to-learn"]["inputs"]["artifacts"]["preflight"])


def test_no_run_holds_the_schedule_for_ever(spec, compiled):
    """Was: no task had a timeout and the Trainer job's wait defaulted to 7 days: one run stuck
    Pending on a GPU stopped all retraining (schedules run one at a time). Now every step's pod
    has a timeout (platform.yaml), the whole run a deadline (Argo's activeDeadlineSeconds), and
    the distill task's wait for a Trainer job (distill.trainer_wait_s) ends before its pod's."""
    from kadet.core.config import DistillConfig
    from kadet.kubeflow.platform import Platform

    plat = Platform.load()
    kube = compiled[1]["platforms"]["kubernetes"]
    assert kube["pipelineConfig"]["activeDeadlineSeconds"] == plat.deadline_s > 0
    executors = kube["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])          # every step, the exit task included
    for name, ex in executors.items():
        step = name.removeprefix("exec-").replace("-", "_").removesuffix("_2")
        assert int(ex["activeDeadlineSeconds"]) == plat.timeout(step) > 0, name
        assert int(ex["activeDeadlineSeconds"]) <= plat.deadline_s, name
    assert int(executors["exec-distill"]["activeDeadlineSeconds"]) > DistillConfig().trainer_wait_s
    assert int(executors["exec-generate"]["activeDeadlineSeconds"]) > int(executors["exec-config"]["activeDeadlineSeconds"])
    # and each pod knows its KFP run (tagged on the MLflow parent run)
    for name, ex in executors.items():
        assert {"name": "KADET_KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in ex["fieldPathAsEnv"]


def test_the_local_pipeline_has_no_cluster_bounds():
    """kadet run (kfp.local) builds the pipeline without the platform: no deadline, no pod timeout."""
    from kfp import compiler

    from kadet.kubeflow.pipeline import make_pipeline

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        compiler.Compiler().compile(make_pipeline(), str(Path(tmp) / "p.yaml"))
        text = (Path(tmp) / "p.yaml").read_text()
    assert "activeDeadlineSeconds" not in text and "pipelineConfig" not in text
