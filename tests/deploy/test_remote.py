"""``kadet submit`` and ``kadet schedule`` against a local HTTP double of the KFP v2beta1 API
(tests/doubles/kfpdouble.py). No KFP server can run here, so these check the *shape* of the requests
``kfp.Client`` sends, not that a cluster runs them."""

from __future__ import annotations

import pytest

from kadet.cli import main
from kadet.core.errors import KadetError
from kadet.kubeflow.compile import DEFAULT_OUTPUT
from kadet.kubeflow.remote import kfp_cron, parse_params
from tests.doubles.kfpdouble import kfp_double


def _posts(double, route):
    return [r for r in double.requests if r["method"] == "POST" and r["path"].split("?")[0] == route]


def test_submit_uploads_the_pipeline_version_once_and_runs_it(capsys):
    """Was: an inline pipeline spec per run (no pipeline or version in the UI) and no backend
    check; then a version named by a hash alone, with no description, and the first upload made a
    second version (KFP's upload of a pipeline adds one named after it). Now the pipeline is
    created without a version and the compiled YAML becomes its one version, named with kadet's
    version, the commit and the content (``kadet-0.1.0-g<commit>-<sha256[:12]>``) and described;
    later submits of the same YAML reuse it."""
    import hashlib

    from kadet import __version__
    from kadet.kubeflow.remote import source_commit

    args = ["submit", "--data", "s3://corpora/scifact", "--param", "training_mode=full", "--param", "sample_size=500",
            "--run-name", "nightly", "--token", "tok"]
    with kfp_double() as (host, double):
        assert main([*args[:1], "--host", host, *args[1:]]) == 0
        assert main([*args[:1], "--host", host, *args[1:]]) == 0          # the same YAML again
    assert not _posts(double, "/apis/v2beta1/pipelines/upload")            # it would add a version of its own
    (created,) = _posts(double, "/apis/v2beta1/pipelines")
    assert created["body"]["display_name"] == "kadet" and created["body"]["description"]
    (upload,) = _posts(double, "/apis/v2beta1/pipelines/upload_version")
    assert DEFAULT_OUTPUT.read_text() in upload["body"]["upload"]            # the committed YAML, as is
    digest = hashlib.sha256(DEFAULT_OUTPUT.read_bytes()).hexdigest()
    commit, _ = source_commit()
    (version,) = double.versions.values()                                    # one version: no duplicate
    assert version["display_name"] == f"kadet-{__version__}-{'g' + commit + '-' if commit else ''}{digest[:12]}"
    assert commit and len(commit) == 12                                      # the tests run from a checkout
    text = version["description"]
    assert f"kadet {__version__}, commit {commit}" in text and digest in text
    assert "ghcr.io/kadet-ml/kadet:0.1.0-cpu" in text and "ghcr.io/kadet-ml/kadet:0.1.0-cuda" in text
    runs = _posts(double, "/apis/v2beta1/runs")
    assert len(runs) == 2
    body = runs[0]["body"]
    assert body["pipeline_version_reference"] == {"pipeline_id": version["pipeline_id"],
                                                  "pipeline_version_id": version["pipeline_version_id"]}
    assert body["display_name"] == "nightly" and body["service_account"] == "kadet-pipeline-runner"
    assert body["runtime_config"]["parameters"] == {"data_uri": "s3://corpora/scifact", "training_mode": "full",
                                                    "sample_size": 500, "model_name": "kadet-scifact"}
    assert body["experiment_id"] in double.experiments
    assert {k.lower(): v for k, v in runs[0]["headers"].items()}["authorization"] == "Bearer tok"
    assert any(r["path"] == "/apis/v1beta1/healthz" for r in double.requests)
    assert "submitted run" in capsys.readouterr().out


def test_submit_says_which_backend_it_needs():
    with kfp_double(version="2.3.0") as (host, double):
        with pytest.raises(KadetError, match=r"the KFP backend is 2.3.0; kadet's pipeline needs Kubeflow Pipelines >= 2.14"):
            from kadet.kubeflow.remote import submit

            submit(host, {"data_uri": "s3://x"})
    assert not _posts(double, "/apis/v2beta1/runs")


def test_schedule_is_idempotent_by_name_and_never_overlaps_or_catches_up(capsys):
    """Was: a changed schedule of the same name was deleted and recreated without a word. Now the
    same schedule again is left as it is, a changed one is refused (naming what changed) and
    replaced only with --replace."""
    with kfp_double() as (host, double):
        args = ["schedule", "--host", host, "--data", "s3://corpora/scifact", "--cron", "0 3 * * 1", "--name", "weekly"]
        assert main(args) == 0 and main(args) == 0                           # the same schedule twice: one job
        out = capsys.readouterr().out
        assert "created schedule weekly" in out and "unchanged schedule weekly" in out
        assert "in the KFP scheduler's timezone (pipeline-install-config cronScheduleTimezone" in out
        assert len(double.recurring) == 1
        (body,) = double.recurring.values()
        assert body["display_name"] == "weekly" and body["mode"] == "ENABLE"
        assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
        assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
        assert body["runtime_config"]["parameters"] == {"data_uri": "s3://corpora/scifact", "model_name": "kadet-scifact"}
        assert body["pipeline_version_reference"]["pipeline_version_id"] in double.versions
        changed = [*args[:-4], "--cron", "0 4 * * 1", "--name", "weekly"]
        assert main(changed) == 2                                            # refused: it would delete the old one
        err = capsys.readouterr().err
        assert "a schedule named 'weekly' already exists" in err and "cron '0 0 3 * * 1' -> '0 0 4 * * 1'" in err
        assert "--replace" in err and list(double.recurring.values()) == [body]
        assert not [r for r in double.requests if r["method"] == "DELETE"]
        assert main([*changed, "--replace"]) == 0                            # replaced
        assert "replaced schedule weekly" in capsys.readouterr().out
        (new,) = double.recurring.values()
        assert new["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 1" and new is not body


def test_two_corpora_keep_two_schedules_and_two_models(capsys):
    """Was: every schedule defaulted to one name (``kadet-retrain``), so scheduling a second corpus
    deleted the first one's, and every corpus registered into ``kadet-embedding`` (two corpora
    fought over ``champion``). Now each corpus gets its own schedule and model, ``kadet-<corpus>``,
    shown in the output; a parameter of the same name for another corpus is refused, not swapped."""
    with kfp_double() as (host, double):
        for corpus in ("s3://kadet/corpora/scifact", "s3://kadet/corpora/NFCorpus/"):
            assert main(["schedule", "--host", host, "--data", corpus, "--cron", "0 3 * * 1"]) == 0
        out = capsys.readouterr().out
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/fiqa"]) == 0
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/fiqa", "--model-name", "fiqa-prod"]) == 0
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/fiqa", "--set",
                     "register.model_name=from-config"]) == 0
        submitted = capsys.readouterr().out
    jobs = {j["display_name"]: j["runtime_config"]["parameters"] for j in double.recurring.values()}
    assert jobs == {"kadet-scifact": {"data_uri": "s3://kadet/corpora/scifact", "model_name": "kadet-scifact"},
                    "kadet-nfcorpus": {"data_uri": "s3://kadet/corpora/NFCorpus/", "model_name": "kadet-nfcorpus"}}
    assert "created schedule kadet-scifact" in out and "registers model kadet-nfcorpus" in out
    runs = [r["body"]["runtime_config"]["parameters"] for r in _posts(double, "/apis/v2beta1/runs")]
    assert [r.get("model_name") for r in runs] == ["kadet-fiqa", "fiqa-prod", None]   # config_yaml's own stays
    assert "register:\n  model_name: from-config" in runs[2]["config_yaml"]
    assert "registers model kadet-fiqa (from --data's corpus" in submitted
    assert "registers model from-config (config_yaml (register.model_name))" in submitted


def test_schedule_list_pause_resume_delete_reach_the_api(capsys):
    with kfp_double() as (host, double):
        for corpus in ("scifact", "nfcorpus"):
            assert main(["schedule", "--host", host, "--data", f"s3://kadet/corpora/{corpus}", "--cron", "0 3 * * 1"]) == 0
        ids = {j["display_name"]: rid for rid, j in double.recurring.items()}
        capsys.readouterr()
        assert main(["schedule", "list", "--host", host]) == 0
        listed = capsys.readouterr().out
        assert "2 schedule(s) in experiment 'kadet'" in listed and listed.count("ENABLED") == 2
        assert "kadet-scifact" in listed and "s3://kadet/corpora/nfcorpus" in listed
        assert main(["schedule", "pause", "--host", host, "--name", "kadet-scifact"]) == 0
        assert double.recurring[ids["kadet-scifact"]]["status"] == "DISABLED"
        assert double.recurring[ids["kadet-nfcorpus"]]["status"] == "ENABLED"
        assert main(["schedule", "list", "--host", host]) == 0 and "DISABLED" in capsys.readouterr().out
        assert main(["schedule", "resume", "--host", host, "--data", "s3://kadet/corpora/scifact"]) == 0  # by corpus
        assert double.recurring[ids["kadet-scifact"]]["status"] == "ENABLED"
        assert main(["schedule", "delete", "--host", host, "--name", "kadet-nfcorpus"]) == 0
        assert list(double.recurring) == [ids["kadet-scifact"]]
        capsys.readouterr()
        assert main(["schedule", "delete", "--host", host, "--name", "kadet-nfcorpus"]) == 2
        assert "no schedule named 'kadet-nfcorpus'" in capsys.readouterr().err
        assert main(["schedule", "pause", "--host", host]) == 2
        assert "which schedule?" in capsys.readouterr().err
        assert main(["schedule", "--host", host, "--data", "s3://kadet/corpora/x"]) == 2
        assert "--cron is required to create a schedule" in capsys.readouterr().err
    posts = {r["path"].split("/")[-1] for r in double.requests if r["method"] == "POST"}
    assert {f"{ids['kadet-scifact']}:disable", f"{ids['kadet-scifact']}:enable"} <= posts
    assert [r["path"] for r in double.requests if r["method"] == "DELETE"][0].endswith(ids["kadet-nfcorpus"])


def test_no_cache_runs_an_uncached_version():
    """Was: ``--no-cache`` went to ``kfp.Client`` as ``enable_caching`` with a pipeline version id,
    which the client ignores (it applies it only to a package submitted inline): every task still
    came from the cache. Now it uploads the package with caching off on every task, as a version
    of its own, and the run (or schedule) runs that version."""
    import yaml

    with kfp_double() as (host, double):
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/x"]) == 0
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/x", "--no-cache"]) == 0
        assert main(["schedule", "--host", host, "--data", "s3://kadet/corpora/x", "--cron", "0 3 * * 1",
                     "--no-cache"]) == 0
    uploads = _posts(double, "/apis/v2beta1/pipelines/upload_version")
    assert len(uploads) == 2                                     # the package as compiled, then its uncached copy
    cached, uncached = (yaml.safe_load_all(u["body"]["upload"].split("\r\n\r\n", 1)[1].rsplit("\r\n--", 1)[0])
                        for u in uploads)
    cached, uncached = list(cached)[0], list(uncached)[0]

    def caching(spec):
        dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
        return [t.get("cachingOptions", {}).get("enableCache", False) for d in dags for t in d["tasks"].values()]

    assert any(caching(cached)) and not any(caching(uncached)) and len(caching(cached)) == len(caching(uncached))
    versions = [r["body"]["pipeline_version_reference"]["pipeline_version_id"] for r in _posts(double, "/apis/v2beta1/runs")]
    names = {v["pipeline_version_id"]: v["display_name"] for v in double.versions.values()}
    assert versions[0] != versions[1] and names[versions[0]] != names[versions[1]]
    (job,) = double.recurring.values()
    assert job["pipeline_version_reference"]["pipeline_version_id"] == versions[1]   # the same uncached version


def test_the_security_context_is_opt_in_and_then_needs_kfp_2_16(tmp_path):
    """Was: every step carried a container ``securityContext`` (kfp-kubernetes'
    ``set_security_context``), a field KFP's backend knows only from 2.16.0 on (an older API
    server's Argo compiler refuses the run), while kadet claimed >= 2.14. Now the committed
    package has none and runs on 2.14; with ``kfp_security_context: true`` the package carries it
    and ``kadet submit`` refuses a backend older than 2.16 before any upload."""
    import yaml

    from kadet.kubeflow.compile import compile_pipeline
    from kadet.kubeflow.platform import DEFAULT_PLATFORM
    from kadet.kubeflow.remote import MIN_BACKEND, package_floor, submit

    assert package_floor(DEFAULT_OUTPUT)[0] == MIN_BACKEND == (2, 14)
    plat = tmp_path / "platform.yaml"
    plat.write_text(yaml.safe_dump({**yaml.safe_load(DEFAULT_PLATFORM.read_text()), "kfp_security_context": True}))
    package = compile_pipeline(tmp_path / "p.yaml", platform=plat)
    executors = list(yaml.safe_load_all(package.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(int(ex["securityContext"]["runAsUser"]) == 10001 for ex in executors.values())
    assert package_floor(package)[0] == (2, 16)
    for version, ok in (("2.15.0", False), ("2.16.0", True)):
        with kfp_double(version=version) as (host, double):
            if ok:
                assert submit(host, {"data_uri": "s3://x"}, package=str(package))
            else:
                with pytest.raises(KadetError, match=r"backend is 2.15.0; .* >= 2.16 \(its steps set a container "
                                                     r"securityContext"):
                    submit(host, {"data_uri": "s3://x"}, package=str(package))
                assert not _posts(double, "/apis/v2beta1/pipelines/upload")
    with kfp_double(version="2.14.0") as (host, double):                      # the committed package: fine
        assert submit(host, {"data_uri": "s3://x"})


def test_cron_and_parameter_errors():
    assert kfp_cron("*/15 * * * *") == "0 */15 * * * *" and kfp_cron("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(KadetError, match="expected 5 fields"):
        kfp_cron("0 3 * *")
    with pytest.raises(KadetError, match="expected key=value"):
        parse_params(["training_mode"], "s3://x")
    with pytest.raises(KadetError, match="no data"):
        parse_params([], None)


def _run_params(double) -> dict:
    (run,) = _posts(double, "/apis/v2beta1/runs")
    return run["body"]["runtime_config"]["parameters"]


def test_submit_passes_profile_config_and_set_to_the_pipeline(tmp_path, capsys):
    """Was: --config, --set and --work-dir were accepted and ignored (``--set generate.tgi.url=...``
    did nothing), and there was no --profile. Now they reach the run as the pipeline's
    ``profile`` / ``config_yaml`` / ``work_dir`` parameters, and the config a step builds from
    them in its pod is exactly what ``kadet config`` builds from the same flags here."""
    from kadet.core.config import load_config, profile_config, resolve_config

    extra = tmp_path / "extra.yaml"
    extra.write_text("label: {rerank_depth: 50}\ndistill: {epochs: 2}\n")
    flags = ["--config", str(extra), "--set", "generate.tgi.url=http://my-tgi.team-a:80", "--set", "distill.lr=1e-4"]
    with kfp_double() as (host, double):
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/x", "--profile", "local", *flags,
                     "--work-dir", "/var/cache/kadet/team-a"]) == 0
    params = _run_params(double)
    assert params["profile"] == "local" and params["work_dir"] == "/var/cache/kadet/team-a"
    in_pod = resolve_config(params["profile"], params["config_yaml"])
    here = load_config(str(extra), flags[3::2], base=profile_config("local"))
    assert in_pod.to_dict() == here.to_dict()
    assert in_pod.generate.tgi.url == "http://my-tgi.team-a:80" and in_pod.label.rerank_depth == 50
    assert "generate.backend" not in params["config_yaml"] and "sample_size" not in params["config_yaml"]  # only changes
    assert "submitted run" in capsys.readouterr().out

    # no --profile: the pipeline's own (gpu) stays, config_yaml carries only the --set
    with kfp_double() as (host, double):
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/x", "--set", "distill.epochs=3"]) == 0
    params = _run_params(double)
    assert "profile" not in params and params["config_yaml"].split() == ["distill:", "epochs:", "3"]
    assert resolve_config("gpu", params["config_yaml"]).distill.epochs == 3

    # a profile file: its settings travel in config_yaml over kadet's defaults (profile "")
    with kfp_double() as (host, double):
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/x", "--profile", str(extra)]) == 0
    params = _run_params(double)
    assert params["profile"] == "" and resolve_config("", params["config_yaml"]).label.rerank_depth == 50


def test_submit_refuses_what_it_cannot_pass_before_any_call(tmp_path, capsys):
    """A work dir off the steps' volume, a bad --set, a --param that clashes with --config, a bad
    --cron: one line, exit 2, and the KFP API never called."""
    cases = [(["--work-dir", "/tmp/kadet"], "must lie on the volume the steps mount (/var/cache/kadet)"),
             (["--set", "distill.nope=1"], "unknown key 'distill.nope'"),
             (["--set", "distill.epochs=2", "--param", "config_yaml=x"], "both set the pipeline parameter config_yaml")]
    with kfp_double() as (host, double):
        for extra, message in cases:
            assert main(["submit", "--host", host, "--data", "s3://kadet/c", *extra]) == 2, extra
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, err
        assert main(["schedule", "--host", host, "--data", "s3://kadet/c", "--cron", "0 25 * * *"]) == 2
        assert "the hour field '25' is not valid" in capsys.readouterr().err
    assert double.requests == []


def test_an_unreachable_or_refusing_host_is_one_line_not_a_traceback(capsys):
    """Was: a 106-line urllib3 traceback and exit 1 for a host that does not answer."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for command in (["submit"], ["schedule", "--cron", "0 3 * * 1"]):
        assert main([*command, "--host", f"http://127.0.0.1:{port}", "--data", "s3://kadet/c"]) == 2
        err = capsys.readouterr().err
        assert err == f"kadet: error: cannot reach the KFP API at http://127.0.0.1:{port}: Connection refused\n"
    with kfp_double(token="right") as (host, double):   # behind an auth proxy, without a valid token
        assert main(["submit", "--host", host, "--data", "s3://kadet/c", "--token", "wrong"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "answered 401 Unauthorized; pass a token with --token" in err
        assert main(["submit", "--host", host, "--data", "s3://kadet/c", "--token", "right"]) == 0


def test_in_a_profile_namespace_the_pipeline_is_found_in_that_namespace():
    """Was: the lookup asked for the *shared* pipeline named kadet (``get_pipeline_id``) while the
    upload went to the profile namespace: a second submit uploaded the pipeline again (KFP answers
    409, the name is taken in that namespace), and where a shared ``kadet`` existed the namespaced
    run was started from the shared pipeline. Now both happen in the namespace."""
    args = ["--data", "s3://kadet/corpora/x", "--namespace", "team-a"]
    with kfp_double() as (host, double):
        shared = double.answer("POST", "/apis/v2beta1/pipelines/upload?name=kadet", None)[1]   # an admin's
        assert main(["submit", "--host", host, *args]) == 0
        assert main(["submit", "--host", host, *args]) == 0
        assert main(["schedule", "--host", host, *args, "--cron", "0 3 * * 1"]) == 0
    creates = _posts(double, "/apis/v2beta1/pipelines")
    assert len(creates) == 1 and creates[0]["body"]["namespace"] == "team-a"
    (mine,) = [p for p in double.pipelines.values() if p["namespace"] == "team-a"]
    assert mine["pipeline_id"] != shared["pipeline_id"]
    refs = [r["body"]["pipeline_version_reference"]["pipeline_id"] for r in _posts(double, "/apis/v2beta1/runs")]
    refs += [j["pipeline_version_reference"]["pipeline_id"] for j in double.recurring.values()]
    assert refs == [mine["pipeline_id"]] * 3
    assert all(e["namespace"] == "team-a" for e in double.experiments.values())
    with kfp_double() as (host, double):   # no shared one: the second submit reuses it (a second upload: 409)
        for _ in range(2):
            assert main(["submit", "--host", host, *args]) == 0
    assert len(_posts(double, "/apis/v2beta1/pipelines")) == 1 and len(double.pipelines) == 1
    assert len(double.versions) == 1


def test_a_backend_that_cannot_bound_a_run_gets_the_package_without_its_deadline(capsys):
    """The run's deadline (platform.yaml deadline_s) is the platform spec's
    ``pipelineConfig.activeDeadlineSeconds``, which KFP backends before 2.17 do not know; they read
    the platform spec strictly and would drop all of it (volumes, Secrets, GPUs). For them the
    package goes without the deadline, said on stderr; the steps' timeouts stay."""
    args = ["submit", "--data", "s3://kadet/c"]
    for tag, bounded in (("2.16.1", False), ("2.17.3", True)):
        with kfp_double(version=tag) as (host, double):
            assert main([args[0], "--host", host, *args[1:]]) == 0
        (upload,) = _posts(double, "/apis/v2beta1/pipelines/upload_version")
        assert ("activeDeadlineSeconds: 259200" in upload["body"]["upload"]) is bounded, tag
        assert "activeDeadlineSeconds: '3600'" in upload["body"]["upload"]       # a step's timeout
        err = capsys.readouterr().err
        assert ("cannot bound a run's time" in err) is not bounded


def test_cron_fields_are_checked():
    for good, six in (("0 3 * * MON-FRI", "0 0 3 * * MON-FRI"), ("*/15 8-18 1,15 * *", "0 */15 8-18 1,15 * *"),
                      ("0 0 3 ? JAN 1", "0 0 3 ? JAN 1")):
        assert kfp_cron(good) == six
    for bad in ("0 3 * * 7", "0 3 * 13 *", "a b c d e", "0 3 * * */0", "0 3 1-2-3 * *", "60 0 3 * * 1"):
        with pytest.raises(KadetError, match="is not valid"):
            kfp_cron(bad)
