"""The real KFP pipeline end to end: the DAG runs locally (kfp.local.SubprocessRunner) on a SciFact
slice, tracked by a real ``mlflow server`` (the compiled YAML and the DAG's shape:
tests/unit/kubeflow/test_pipeline.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from kadet.core.errors import KadetError
from tests.doubles.data import scifact_slice
from tests.doubles.mlflowserver import mlflow_server
from tests.doubles.s3server import ACCESS_KEY, SECRET_KEY, rclone_s3, s3_env


# The default query type (sentence, no LLM: the same queries on any CPU); the LLM backends have
# their own tests in test_generate.py. The pre-flight step runs and logs its figures, but on 20
# judged queries its interval is wide, so these runs go on whatever it measures (min_teacher_lead
# -1); its stop has its own run below and its figures test_preflight.py.
TINY = """
prepare: {sample_size: 12}
generate: {types: {sentence: 1.0}}
label: {rerank_depth: 10, list_size: 8, min_top_percentile: 0}
distill: {epochs: 2, batch_size: 8, chunk_size: 16, passage_max_len: 128, lr: 1.0e-5, min_teacher_lead: -1.0}
register: {model_name: kadet-ci}
"""


@pytest.mark.slow
def test_local_kfp_run_of_the_real_dag_on_s3(tmp_path, monkeypatch, capfd):
    """prepare -> generate (2 shards) -> mine -> label (2 shards) -> distill -> evaluate ->
    register -> promote/challenger on 300 SciFact documents and 20 test queries, with the corpus
    and every step's outputs on a real S3 server (rclone) and MLflow (a real ``mlflow server``)
    keeping its artifacts on that S3 through its artifact proxy."""
    import mlflow

    from kadet.core.storage import publish, s3_client
    from kadet.kubeflow.local import run_local

    data = scifact_slice(tmp_path / "data")
    (tmp_path / "tiny.yaml").write_text(TINY)
    with rclone_s3(tmp_path / "s3", buckets=("kadet", "mlflow")) as endpoint:
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)                       # the component subprocesses inherit these
        monkeypatch.setenv("KADET_S3_CACHE", str(tmp_path / "s3-cache"))
        publish(data, "s3://kadet/corpora/scifact-slice")
        server_env = {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                      "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
        with mlflow_server(tmp_path / "mlflow", server_env, artifacts_destination="s3://mlflow/artifacts") as uri:
            summary = run_local("s3://kadet/corpora/scifact-slice", str(tmp_path / "work"), str(tmp_path / "tiny.yaml"),
                                [f"tracking.tracking_uri={uri}", "artifact_uri=s3://kadet/runs"], shards=2)
            # the console: a start and an end line per stage, nothing of KFP's (that is in the log)
            shown = capfd.readouterr().out
            for stage in ("preflight", "prepare", "generate-1-of-2", "mine", "label-merge", "distill", "evaluate",
                          "register"):
                assert re.search(rf"^  {stage} +started$", shown, re.M), (stage, shown)
                assert re.search(rf"^  {stage} +done  [0-9.]+ s", shown, re.M), (stage, shown)
            assert re.search(r"^  mine +done .* queries \d+", shown, re.M)
            # the pre-flight step ran on the corpus's judged queries (on S3) and its lead reached the summary
            pre = summary["preflight"]
            assert pre["lead_ci_low"] <= pre["lead"] <= pre["lead_ci_high"] and pre["base"] > 0
            assert "KFP Executor" not in shown and "KFP Executor" in Path(summary["log"]).read_text()
            c = mlflow.MlflowClient(uri, registry_uri=uri)   # its registry named: never a process default
            exp = c.get_experiment_by_name("kadet")
            children = c.search_runs([exp.experiment_id],
                                     filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run']}'")
            names = sorted(r.info.run_name for r in children)
            assert names == sorted(["preflight", "prepare", "generate-0-of-2", "generate-1-of-2", "generate-merge",
                                    "mine", "label-0-of-2", "label-1-of-2", "label-merge", "distill", "evaluate",
                                    "register"])
            assert all(r.info.status == "FINISHED" for r in children)
            assert c.get_run(summary["parent_run"]).info.status == "FINISHED"
            by_name = {r.info.run_name: r for r in children}
            arts = lambda name: {a.path for a in c.list_artifacts(by_name[name].info.run_id)}  # noqa: E731
            assert {"loss_curves.png", "curves.json", "manifest.json"} <= arts("distill")
            assert {"ndcg_by_query_type.png", "ndcg_by_query_type.json", "comparison.json"} <= arts("evaluate")
            assert "queries_sample.json" in arts("generate-merge") and "label_statistics.json" in arts("label-merge")
            assert "report.html" in arts("register") and "model_card/README.md" in {
                a.path for a in c.list_artifacts(by_name["register"].info.run_id, "model_card")}
            report = mlflow.artifacts.download_artifacts(run_id=summary["parent_run"], artifact_path="report.html",
                                                         dst_path=str(tmp_path / "dl"), tracking_uri=uri)
            check_report(Path(report).read_text(), "gold")
            assert by_name["evaluate"].data.metrics["base_ndcg_at_10"] > 0.5       # real model on real data
            assert {d.dataset.source for d in by_name["prepare"].inputs.dataset_inputs}  # lineage recorded
            # every step published its outputs to S3
            s3 = s3_client()
            for name, run in by_name.items():
                if name == "register":
                    continue
                prefix = run.data.tags["kadet.artifact_uri"].removeprefix("s3://kadet/")
                objects = {o.object_name.removeprefix(prefix + "/") for o in s3.list_objects("kadet", prefix + "/", recursive=True)}
                assert "manifest.json" in objects, (name, objects)
            model_files = [o.object_name for o in s3.list_objects("kadet", "runs/", recursive=True)
                           if "/distill/model/" in o.object_name]
            assert any(f.endswith("model.safetensors") for f in model_files) and not any("checkpoint" in f for f in model_files)
            # the gate's outcome is applied: champion if it passed, challenger with a reason if not
            version = summary["version"]
            mv = c.get_model_version("kadet-ci", version)
            assert summary["gate"].endswith("(gold: judged queries)")           # which evaluation it rests on
            if summary["gate"].startswith("passed"):
                assert c.get_model_version_by_alias("kadet-ci", "champion").version == version
            else:
                assert c.get_model_version_by_alias("kadet-ci", "challenger").version == version
                assert summary["gate"].startswith(mv.tags["kadet.gate_failure"])
            # the registered model's files are on S3, and load back through MLflow's artifact proxy
            assert list((tmp_path / "s3" / "mlflow" / "artifacts").rglob("model.safetensors"))
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)          # the server's registry, whatever an earlier test left set
            model = mlflow.sentence_transformers.load_model(f"models:/kadet-ci/{version}")
            assert model.encode_query(["does aspirin prevent heart attacks"]).shape == (1, 384)


@pytest.mark.slow
def test_a_failed_run_closes_its_mlflow_parent_as_failed(tmp_path, capfd):
    """The ExitHandler's task runs after a failure: the parent run ends FAILED with the error."""
    import mlflow

    from kadet.kubeflow.local import run_local

    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "fine"}\n{"title": "no id here", "text": "x"}\n')
    (bad / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(KadetError) as failed:
        run_local(str(bad), str(tmp_path / "work"))
    # one line: the stage, the cause with file:line:field, and where the whole log is
    # (the pre-flight step is the first to read a judged corpus, so it is the one that finds the bad line)
    line = str(failed.value)
    assert "\n" not in line and line.startswith("stage preflight failed: ")
    assert "corpus.jsonl:2: field '_id': missing id" in line
    log_file = Path(re.search(r"full log: (\S+)\)", line).group(1))
    assert log_file.is_file() and "Traceback" in log_file.read_text()
    # the console said which stage failed and where its log is; KFP's own output went to a file
    shown = capfd.readouterr().out
    assert "preflight      started" in shown and "preflight      FAILED after" in shown and str(log_file) in shown
    assert "KFP Executor" not in shown
    kfp_output = Path(line.split("KFP's output: ")[1])
    assert "KFP Executor" in kfp_output.read_text()
    c = mlflow.MlflowClient(*[f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"] * 2)   # tracking and registry
    exp = c.get_experiment_by_name("kadet")
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert parent.info.status == "FAILED" and "exit-handler" in parent.data.tags["kadet.error"]
    assert child.info.run_name == "preflight" and child.info.status == "FAILED"


@pytest.mark.slow
def test_a_corpus_without_judgements_runs_end_to_end_on_silver(tmp_path):
    """Only ``corpus.jsonl``: the label step holds synthetic queries out (whole source passages),
    evaluation and gate use them (silver), and every output says so."""
    import json
    import shutil

    import mlflow

    from kadet.kit.data import read_records
    from kadet.kubeflow.local import run_local

    data = scifact_slice(tmp_path / "full")
    (tmp_path / "corpus-only").mkdir()
    shutil.copy(data / "corpus.jsonl", tmp_path / "corpus-only" / "corpus.jsonl")
    (tmp_path / "tiny.yaml").write_text(TINY.replace("sample_size: 12", "sample_size: 60"))
    summary = run_local(str(tmp_path / "corpus-only"), str(tmp_path / "work"), str(tmp_path / "tiny.yaml"))
    assert summary["eval_kind"] == "silver" and "(silver: held-out synthetic queries" in summary["gate"]
    # silver never promotes by default: the version is the challenger and every output says why
    assert summary["gate"].startswith("silver evaluation cannot promote") and summary["champion"] is None
    assert "kadet judge" in summary["caveat"]
    kfp = tmp_path / "work" / "kfp"
    labels = read_records(next(kfp.rglob("labels.jsonl")), "qid", {"split": str})
    silver = [r for r in labels if r["split"] == "silver"]
    assert silver and len(silver) <= len(labels) // 5
    assert not {r["source_doc_id"] for r in silver} & {r["source_doc_id"] for r in labels if r["split"] != "silver"}
    comp = json.loads(next(kfp.rglob("comparison.json")).read_text())
    assert comp["kind"] == "silver" and comp["queries"] == len(silver) and set(comp["by_type"]) == {"sentence"}
    c = mlflow.MlflowClient(*[f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"] * 2)   # tracking and registry
    mv = c.get_model_version("kadet-ci", summary["version"])
    assert mv.tags["kadet.eval_kind"] == "silver" and "**silver**" in mv.description
    assert "**Silver (no judged queries)" in mv.description and "kadet judge" in mv.description
    assert str(c.get_model_version_by_alias("kadet-ci", "challenger").version) == summary["version"]
    # report.html: on the parent run in MLflow and as the register task's KFP output
    local = mlflow.artifacts.download_artifacts(run_id=summary["parent_run"], artifact_path="report.html",
                                                dst_path=str(tmp_path / "dl"), tracking_uri=c._tracking_client.tracking_uri)
    check_report(Path(local).read_text(), "silver")
    assert 'id="silver"' in Path(local).read_text() and "kadet judge" in Path(local).read_text()
    assert (next(kfp.rglob("run_report")).read_text() == Path(local).read_text())


@pytest.mark.slow
def test_a_run_with_nothing_to_learn_stops_before_any_work(tmp_path, capsys):
    """A teacher that is the base model itself (label.teacher=dense) reorders nothing: the
    pre-flight step measures a lead of exactly 0 on the judged queries, and the run stops there:
    no prepare ... register task, no registered model; the reason is on the parent run and on the
    console. A real KFP local run and MLflow store."""
    import mlflow

    from kadet.cli import print_run_summary
    from kadet.kubeflow.local import run_local

    data = scifact_slice(tmp_path / "data")
    (tmp_path / "tiny.yaml").write_text(TINY.replace("min_teacher_lead: -1.0", "min_teacher_lead: 0.0"))
    summary = run_local(str(data), str(tmp_path / "work"), str(tmp_path / "tiny.yaml"), ["label.teacher=dense"])
    assert summary["nothing_to_learn"].startswith("nothing to learn: the teacher (dense)")
    assert "lead +0.0000, 95% interval [+0.0000, +0.0000]" in summary["nothing_to_learn"]
    assert [n for n, _ in summary["stages"]] == ["preflight"] and summary["version"] is None
    c = mlflow.MlflowClient(*[f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"] * 2)   # tracking and registry
    assert c.search_registered_models() == []
    pre = c.search_runs([c.get_run(summary["parent_run"]).info.experiment_id], "attributes.run_name = 'preflight'")
    assert pre[0].data.metrics["preflight.lead"] == 0.0
    print_run_summary(summary)
    assert summary["nothing_to_learn"] in capsys.readouterr().out
    # the KFP run page's Markdown says it too, with the pre-flight's figures
    (page,) = [p for p in (tmp_path / "work" / "kfp").rglob("summary") if p.is_file()]
    text = page.read_text()
    assert page.parent.name == "nothing-to-learn" and text.startswith("## Nothing to learn: lead +0.0000 [+0.0000, +0.0000]")
    assert summary["nothing_to_learn"] in text and "- MLflow run: `runs:/" in text


def check_report(text: str, kind: str) -> None:
    """``report.html``, parsed: every section there, self-contained, its images real PNGs."""
    import base64
    from html.parser import HTMLParser

    from kadet.reporting.report import SECTIONS

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.images, self.external, self.stack = [], [], [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "id" in a:
                self.ids.append((tag, a["id"]))
            if tag == "img":
                self.images.append(a.get("src", ""))
            # self-contained: nothing to load (images, scripts, stylesheets); links to follow are fine
            if a.get("src") and not a["src"].startswith("data:"):
                self.external.append(a["src"])
            if tag == "link" and a.get("href"):
                self.external.append(a["href"])
            if tag not in ("img", "meta", "br", "hr", "link", "input"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])      # well nested
            self.stack.pop()

    page = Page()
    page.feed(text)
    page.close()
    assert [i for tag, i in page.ids if tag == "h2"] == list(SECTIONS) and not page.external and page.stack == []
    assert ("p", "use") in page.ids and (("p", "silver") in page.ids) == (kind == "silver")  # how to use; caveat
    assert len(page.images) == 2                                                       # by type, curves
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64" and base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"<b>{kind}</b>" in text and "paired bootstrap interval" in text
    assert "MLflow run" in text and "model version" in text                           # where to go next


RETRAIN = """
prepare: {sample_size: 0}
generate: {types: {question: 0.3, sentence: 1.0}, max_new_tokens: 24}
label: {rerank_depth: 10, list_size: 8, min_top_percentile: 0}
distill: {epochs: 1, batch_size: 8, chunk_size: 16, passage_max_len: 128, lr: 1.0e-5, min_teacher_lead: -1.0}
register: {model_name: kadet-ci}
"""


@pytest.mark.slow
def test_a_scheduled_run_over_a_grown_corpus_does_only_the_new_work(tmp_path):
    """The same folder three times, as a weekly schedule sees it: run 1 with 80% of the
    documents, run 2 after the corpus grew to 100% in place, run 3 with nothing changed.
    Real KFP local runs, the packaged LLM (questions) and teacher, a real MLflow store."""
    import mlflow

    from kadet.kubeflow.local import run_local

    full = scifact_slice(tmp_path / "full", n_queries=8, n_docs=100)
    lines = (full / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    data = shutil.copytree(full, tmp_path / "docs")
    (data / "corpus.jsonl").write_text("".join(lines[:80]), encoding="utf-8")   # the judged documents come first
    (tmp_path / "retrain.yaml").write_text(RETRAIN)
    work, cfg = str(tmp_path / "work"), str(tmp_path / "retrain.yaml")
    first = run_local(str(data), work, cfg)
    c = mlflow.MlflowClient(*[f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"] * 2)   # tracking and registry
    if first["champion"] is None:     # as a user may: so that run 2 must gate against a champion measured on 80%
        c.set_registered_model_alias("kadet-ci", "champion", first["version"])
    (data / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")       # the corpus grew, same address
    second = run_local(str(data), work, cfg)
    third = run_local(str(data), work, cfg)

    g1, g2 = first["work"]["generate"], second["work"]["generate"]
    assert g1["reused"] == 0 and g1["new"] > 10
    # only the 20 new documents get LLM requests: a quarter of run 1's (a fifth of run 2's), give or take the
    # seeded 0.3 draw per passage
    assert g2["reused"] == g1["new"] and 0 < g2["new"] <= 0.5 * g1["new"]
    t1, t2 = first["work"]["label"], second["work"]["label"]
    assert t1["reused"] == 0 and t1["new"] > 0
    # the teacher scores only pairs it has not seen: the new queries' lists, and the new documents that
    # entered the old queries' lists (mining runs again over the grown corpus)
    assert t2["reused"] > t2["new"] and t2["new"] <= 0.6 * t1["new"]
    v1, v2 = first["version"], second["version"]
    assert v1 and v2 and v2 != v1
    tags = c.get_model_version("kadet-ci", v2).tags
    # the gate compared run 2 with the champion, evaluated again on the grown corpus (was: a crash, the
    # register step had no evaluation data)
    assert tags["kadet.decided_against"] == v1
    assert tags["kadet.parent_version"] == v1
    assert tags["kadet.changes_since_parent"].startswith("+20 added, 0 changed, -0 removed")
    assert int(tags["kadet.documents"]) == 100 and tags["kadet.corpus_fingerprint"] != \
        c.get_model_version("kadet-ci", v1).tags["kadet.corpus_fingerprint"]
    assert "## Lineage" in c.get_model_version("kadet-ci", v2).description
    report = mlflow.artifacts.download_artifacts(run_id=second["parent_run"], artifact_path="report.html",
                                                 dst_path=str(tmp_path / "dl"), tracking_uri=second["tracking_uri"])
    page = Path(report).read_text()
    assert 'id="lineage"' in page and f"parent version: {v1}" in page and "reused from earlier runs" in page
    assert f"champion v{v1} (re-evaluated)" in page
    # nothing changed: nothing trained, nothing registered, and the run says so
    assert third["unchanged_since"] == v2 and third["version"] is None
    assert third["gate"].startswith(f"no change since version {v2}")
    assert [s for s, _ in third["stages"]] == []                         # no stage ran
    assert len(c.search_model_versions("name = 'kadet-ci'")) == 2
