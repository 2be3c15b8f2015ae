"""The kadet DAG: fingerprint -> (nothing new: say so) or pre-flight -> (nothing to learn: say so)
or prepare -> generate (sharded) -> mine -> label (sharded) -> distill -> evaluate -> register ->
promote (``dsl.If``) or mark challenger.

The pre-flight task (kadet/stages/preflight.py) measures, on the corpus's judged queries, the teacher's
lead over the base model; when it is not measurably positive the run stops before any work and
says so. Silver runs (no judged queries) always go on.

The fingerprint task is never cached: it reads what the corpus holds now (object names, sizes
and ETags on S3; file digests locally) and whether a registered version was trained on these
very inputs (corpus content + settings). If one was, the run trains nothing and says "no change
since version N"; otherwise prepare takes the corpus fingerprint as an input, so its cache key
(and that of everything after it) changes with the content, not only with the address.

Compile it (the committed ``kadet/kubeflow/kadet_pipeline.yaml`` must equal this output; CI checks):

    python -m kadet.kubeflow.compile                 # writes kadet/kubeflow/kadet_pipeline.yaml
    python -m kadet.kubeflow.compile --check         # exit 1 if the committed YAML is stale

Settings: the run parameters are one table (kadet/kubeflow/parameters.py), from which the
pipeline's signature and descriptions are made. The first task (``config``) resolves the run's
one config from them: the ``profile`` (packaged ``gpu`` by default; ``local``; "" = kadet's
defaults), then ``config_yaml`` (any kadet YAML), then each parameter that is set, by path (each
defaults to "not set": -1, "" or {}). Every other task takes that resolved config (YAML text,
read back frozen) and its input artifacts; the data tasks are cached on it and on their inputs.

Every task knows its pipeline run (MLflow nests each stage's run under one parent run): on a
cluster from its pod (``platform.yaml: run_key_field``), so that the run id is no task input and
KFP's cache can reuse a data step (prepare ... evaluate) whose inputs did not change; locally as
the job id. The registry steps never cache, and are retried like the data steps (each is idempotent).
"""


from kfp import dsl

from kadet.kubeflow import components, parameters
from kadet.kubeflow.platform import Platform

PIPELINE_NAME = "kadet"
DESCRIPTION = ("Adapt a sentence-transformers embedding model to one corpus: synthetic queries, mined "
               "candidates, teacher labels, listwise distillation; gated MLflow registration.")
#: Retries of a failed data task (backoff 30 s, doubling, at most 10 min).
RETRIES = 2


def make_pipeline(base_image: str | None = None, platform: Platform | None = None, gpu_image: str | None = None):
    """The pipeline function, its components built on ``base_image``; ``platform`` (GPU, PVC,
    Secrets, node selectors: ``kadet/kubeflow/platform.yaml``) is applied for a cluster, whose GPU
    steps then run on ``gpu_image``."""
    c = components.build(base_image)
    if platform is not None:
        g = components.build(gpu_image or components.gpu_image())
        for step in platform.gpu_steps:
            setattr(c, step, getattr(g, step))
    # gpu_count > 1: the distill task launches a Kubeflow Trainer job (kadet/kubeflow/trainjob.py)
    trainer_job = platform.trainer_job(gpu_image or components.gpu_image()) if platform is not None else ""
    # on a cluster the run's key comes from the pod (platform.run_key_field), so no task takes a
    # per-run input and unchanged steps are cached across runs; locally, the job id is passed
    run = "" if platform is not None and platform.run_key_field else dsl.PIPELINE_JOB_ID_PLACEHOLDER

    def kadet_pipeline(*args, **kwargs):
        values = parameters.signature().bind(*args, **kwargs).arguments
        resolved = c.config(**{name: values[name] for name in parameters.CONFIG_INPUTS})
        common = dict(config=resolved.output, pipeline_run=run)
        closer = c.finish(profile=values["profile"], config_yaml=values["config_yaml"], work_dir=values["work_dir"],
                          pipeline_run=run)
        tasks = _run(c, closer, values, common, trainer_job)
        resolved.set_display_name("0 resolve the run's config").set_caching_options(False)
        if platform is not None:
            for step, task in [("config", resolved), *tasks]:
                platform.apply(task, step)

    kadet_pipeline.__signature__ = parameters.signature()
    kadet_pipeline.__doc__ = parameters.docstring(
        "Adapt an embedding model to one corpus; register it in MLflow if it beats the champion.")
    # on a cluster the whole run is bounded too (platform.yaml deadline_s: Argo's activeDeadlineSeconds)
    bound = dsl.PipelineConfig(active_deadline_seconds=platform.deadline_s) if platform and platform.deadline_s else None
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_config=bound)(kadet_pipeline)


def _run(c, closer, values: dict, common: dict, trainer_job: str) -> list[tuple[str, object]]:
    """Inside the exit handler that closes the MLflow parent run: fingerprint, then nothing new,
    nothing to learn, or the training branch. Returns ``(step, task)`` pairs for the platform."""
    # closes the MLflow parent run FINISHED or FAILED, whatever happens inside
    closer.set_caching_options(False)
    with dsl.ExitHandler(closer, name="kadet-run"):
        # never cached: what the corpus holds now, and whether a version was trained on exactly that
        fp = c.fingerprint(**common)
        with dsl.If(fp.outputs["unchanged_since"] != "", name="nothing-new"):
            same = c.unchanged(version=fp.outputs["unchanged_since"], **common)
        with dsl.Else(name="new-content-or-settings"):
            # with judged queries: is the teacher measurably better than the base? (kadet/stages/preflight.py)
            pre = c.preflight(corpus_fingerprint=fp.outputs["corpus"], **common)
            # (a flag, not the reason: a condition on free text with quotes is fragile)
            with dsl.If(pre.outputs["go"] == "yes", name="something-to-learn"):
                tasks = _train(c, fp, values, common, trainer_job)
            with dsl.Else(name="nothing-to-learn"):
                stopped = c.nothing_to_learn(reason=pre.outputs["reason"], preflight=pre.outputs["report"], **common)
    closer.set_display_name("close MLflow run")
    fp.set_display_name("0 corpus fingerprint").set_caching_options(False)
    fp.set_retry(num_retries=RETRIES, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
    same.set_display_name("0 nothing new: no change since the version trained on it").set_caching_options(False)
    # never cached: a cached task logs no MLflow run, and its figures belong on every run's page
    # (the embedding cache keeps a rerun cheap); retried like the data steps
    pre.set_display_name("0 pre-flight: the teacher's lead on judged queries").set_caching_options(False)
    pre.set_retry(num_retries=RETRIES, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
    stopped.set_display_name("0 nothing to learn: the teacher is not ahead of the base").set_caching_options(False)
    return [("finish", closer), ("fingerprint", fp), ("unchanged", same), ("preflight", pre),
            ("nothing_to_learn", stopped), *tasks]


#: Display names of the training branch's tasks, by step.
TITLES = {"prepare": "1 prepare corpus", "generate": "2 generate queries",
          "generate_merge": "2 merge queries", "mine": "3 mine candidates", "label": "4 teacher scores",
          "label_merge": "4 filter and split labels", "distill": "5 distill", "evaluate": "6 evaluate base vs candidate",
          "register": "7 register and gate", "promote": "7 promote to champion", "challenger": "7 keep as challenger"}
#: Data tasks: cached on their inputs (prepare's include the corpus fingerprint), retried on failure.
CACHED = ("prepare", "generate", "generate_merge", "mine", "label", "label_merge", "distill", "evaluate")
#: Registry tasks: never cached, retried on failure (each is idempotent: the register step finds
#: its version by the model's fingerprint; kadet/registry/promotion.py).
REGISTRY = ("register", "promote", "challenger")


def _train(c, fp, values: dict, common: dict, trainer_job: str) -> list[tuple[str, object]]:
    """The training branch: prepare ... register, then promote or keep as challenger. Returns
    ``(step, task)`` pairs for the platform settings."""
    prep = c.prepare(corpus_fingerprint=fp.outputs["corpus"], inputs_fingerprint=fp.outputs["inputs"], **common)
    prepared = prep.outputs["prepared"]
    gen_idx = c.shard_indices(num_shards=values["generate_shards"]).set_display_name("generate-shards")
    with dsl.ParallelFor(items=gen_idx.output, name="generate-shard") as i:
        gen = c.generate(prepared=prepared, shard_index=i, num_shards=values["generate_shards"], **common)
    queries = c.generate_merge(prepared=prepared, shards=dsl.Collected(gen.outputs["shard"]),
                               num_shards=values["generate_shards"], **common)
    mined = c.mine(prepared=prepared, queries=queries.outputs["queries"], **common)
    lab_idx = c.shard_indices(num_shards=values["label_shards"]).set_display_name("label-shards")
    with dsl.ParallelFor(items=lab_idx.output, name="label-shard") as j:
        scored = c.label(prepared=prepared, candidates=mined.outputs["candidates"], shard_index=j,
                         num_shards=values["label_shards"], **common)
    labels = c.label_merge(prepared=prepared, candidates=mined.outputs["candidates"],
                           shards=dsl.Collected(scored.outputs["scores"]), num_shards=values["label_shards"], **common)
    trained = c.distill(labels=labels.outputs["labels"], trainer_job=trainer_job, **common)
    ev = c.evaluate(model=trained.outputs["model"], labels=labels.outputs["labels"], **common)
    # the evaluation data too: a champion measured on other data (the corpus grew) is evaluated again here
    gate = c.register(model=trained.outputs["model"], report=ev.outputs["report"], prepared=prepared, **common)
    with dsl.If(gate.outputs["decision"] == "promote", name="gate-passed"):
        promoted = c.promote(version=gate.outputs["version"], gate=gate.outputs["summary"], **common)
    with dsl.Else(name="gate-failed"):
        held_back = c.challenger(version=gate.outputs["version"], reason=gate.outputs["reason"],
                                 gate=gate.outputs["summary"], **common)
    tasks = [("prepare", prep), ("shard_indices", gen_idx), ("generate", gen), ("generate_merge", queries),
             ("mine", mined), ("shard_indices", lab_idx), ("label", scored), ("label_merge", labels),
             ("distill", trained), ("evaluate", ev), ("register", gate), ("promote", promoted),
             ("challenger", held_back)]
    for step, task in tasks:
        if step in TITLES:
            task.set_display_name(TITLES[step])
        task.set_caching_options(step in CACHED)
        if step in CACHED or step in REGISTRY:
            # a failed try resumes: generate and label keep their logs under work_dir, distill its checkpoints
            task.set_retry(num_retries=RETRIES, backoff_duration="30s", backoff_factor=2.0,
                           backoff_max_duration="600s")
    return tasks


kadet_pipeline = make_pipeline(platform=Platform.load())
