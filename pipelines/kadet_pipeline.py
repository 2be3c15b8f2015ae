"""The kadet DAG: prepare -> generate (sharded) -> mine -> label (sharded) -> distill ->
evaluate -> register -> promote (``dsl.If``) or mark challenger (``dsl.Else``).

Compile it (the committed ``pipelines/kadet_pipeline.yaml`` must equal this output; CI checks):

    python -m pipelines.compile                 # writes pipelines/kadet_pipeline.yaml
    python -m pipelines.compile --check         # exit 1 if the committed YAML is stale

Settings: the ``profile`` (packaged ``gpu`` by default; ``local``; "" = kadet's defaults), then
``config_yaml`` (any kadet YAML), then the UI parameters that are set: each defaults to "not set"
(-1, "" or {}), which leaves its key to the profile and config_yaml.

Every task knows its pipeline run (MLflow nests each stage's run under one parent run): on a
cluster from its pod (``platform.yaml: run_key_field``), so that the run id is no task input and
KFP's cache can reuse a data step (prepare ... evaluate) whose inputs did not change; locally as
the job id. The registry steps never cache.
"""


from kfp import dsl

import components
from kadet.steps import NOT_SET
from pipelines.platform import Platform

PIPELINE_NAME = "kadet"
#: Tasks whose result depends on the MLflow registry's state, not only on their inputs.
UNCACHED = ("register", "promote", "challenger")
#: Retries of a failed data task (backoff 30 s, doubling, at most 10 min).
RETRIES = 2


def make_pipeline(base_image: str | None = None, platform: Platform | None = None, gpu_image: str | None = None):
    """The pipeline function, its components built on ``base_image``; ``platform`` (GPU, PVC,
    Secrets, node selectors: ``pipelines/platform.yaml``) is applied for a cluster, whose GPU
    steps then run on ``gpu_image``."""
    c = components.build(base_image)
    if platform is not None:
        g = components.build(gpu_image or components.gpu_image())
        for step in platform.gpu_steps:
            setattr(c, step, getattr(g, step))

    # gpu_count > 1: the distill task launches a Kubeflow Trainer job (kadet/trainjob.py)
    trainer_job = platform.trainer_job(gpu_image or components.gpu_image()) if platform is not None else ""

    @dsl.pipeline(name=PIPELINE_NAME, description=(
        "Adapt a sentence-transformers embedding model to one corpus: synthetic queries, mined "
        "candidates, teacher labels, listwise distillation; gated MLflow registration."))
    def kadet_pipeline(
        data_uri: str,
        eval_qrels_uri: str = "",
        profile: str = "gpu",
        config_yaml: str = "",
        sample_size: int = NOT_SET,
        query_types: dict = {},
        generate_shards: int = 2,
        teacher: str = "",
        list_size: int = NOT_SET,
        label_shards: int = 2,
        training_mode: str = "",
        ndcg_floor: float = NOT_SET,
        min_delta: float = NOT_SET,
        max_recall_drop: float = NOT_SET,
        model_name: str = "",
        work_dir: str = "/var/cache/kadet",
    ):
        """Adapt an embedding model to one corpus; register it in MLflow if it beats the champion.

        Args:
            data_uri: The corpus (BEIR folder or corpus file, s3:// or a path); with judged queries: gold evaluation, else silver.
            eval_qrels_uri: A qrels file to evaluate on instead of the folder's (optional).
            profile: Settings profile under config_yaml: gpu (METHOD.md's scale), local (CPU) or "" (defaults).
            config_yaml: Any kadet YAML; its keys override the profile's.
            sample_size: Passages that get synthetic queries (-1: the profile's).
            query_types: Query types and queries per passage, e.g. {"question": 1} (empty: the profile's).
            generate_shards: Parallel generation tasks.
            teacher: The teacher reranker: ensemble, cross-encoder:PATH, monot5:PATH, ... (empty: the profile's).
            list_size: Passages per training list (-1: the profile's).
            label_shards: Parallel teacher-scoring tasks.
            training_mode: query (query tower only; the document index stays valid) or full (empty: the profile's).
            ndcg_floor: The gate: the candidate's nDCG@10 must reach this (-1: the profile's).
            min_delta: The gate: nDCG@10 gain over the champion it needs (-1: the profile's).
            max_recall_drop: The gate: Recall@100 it may lose against the champion (-1: the profile's).
            model_name: MLflow registered model name (empty: the profile's).
            work_dir: Cache and resumable work, shared by the tasks (on a cluster: the cache PVC's mount).
        """
        # on a cluster the run's key comes from the pod (platform.run_key_field), so no task takes a
        # per-run input and unchanged steps are cached across runs; locally, the job id is passed
        run = "" if platform is not None and platform.run_key_field else dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = dict(config_yaml=config_yaml, profile=profile, work_dir=work_dir, pipeline_run=run)

        # closes the MLflow parent run FINISHED or FAILED, whatever happens inside
        closer = c.finish(**common).set_caching_options(False)
        with dsl.ExitHandler(closer, name="kadet-run"):
            prep = c.prepare(data_uri=data_uri, eval_qrels_uri=eval_qrels_uri, sample_size=sample_size, **common)

            gen_idx = c.shard_indices(num_shards=generate_shards).set_display_name("generate-shards")
            with dsl.ParallelFor(items=gen_idx.output, name="generate-shard") as i:
                gen = c.generate(prepared=prep.outputs["prepared"], query_types=query_types, shard_index=i,
                                 num_shards=generate_shards, **common)
            queries = c.generate_merge(prepared=prep.outputs["prepared"], shards=dsl.Collected(gen.outputs["shard"]),
                                       query_types=query_types, num_shards=generate_shards, **common)

            mined = c.mine(prepared=prep.outputs["prepared"], queries=queries.outputs["queries"], **common)

            lab_idx = c.shard_indices(num_shards=label_shards).set_display_name("label-shards")
            with dsl.ParallelFor(items=lab_idx.output, name="label-shard") as j:
                scored = c.label(prepared=prep.outputs["prepared"], candidates=mined.outputs["candidates"],
                                 teacher=teacher, list_size=list_size, shard_index=j, num_shards=label_shards, **common)
            labels = c.label_merge(prepared=prep.outputs["prepared"], candidates=mined.outputs["candidates"],
                                   shards=dsl.Collected(scored.outputs["scores"]), teacher=teacher, list_size=list_size,
                                   num_shards=label_shards, **common)

            trained = c.distill(labels=labels.outputs["labels"], training_mode=training_mode, list_size=list_size,
                                trainer_job=trainer_job, **common)
            ev = c.evaluate(model=trained.outputs["model"], labels=labels.outputs["labels"], data_uri=data_uri,
                            eval_qrels_uri=eval_qrels_uri, **common)

            gate = c.register(model=trained.outputs["model"], report=ev.outputs["report"], model_name=model_name,
                              ndcg_floor=ndcg_floor, min_delta=min_delta, max_recall_drop=max_recall_drop, **common)
            with dsl.If(gate.outputs["decision"] == "promote", name="gate-passed"):
                promoted = c.promote(version=gate.outputs["version"], model_name=model_name, **common)
            with dsl.Else(name="gate-failed"):
                held_back = c.challenger(version=gate.outputs["version"], reason=gate.outputs["reason"],
                                         model_name=model_name, **common)

        for task in (prep, gen, queries, mined, scored, labels, trained, ev):
            task.set_caching_options(True)
            # a failed try resumes: generate and label keep their logs under work_dir, distill its checkpoints
            task.set_retry(num_retries=RETRIES, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
        for task, title in ((prep, "1 prepare corpus"), (gen, "2 generate queries"), (queries, "2 merge queries"),
                            (mined, "3 mine candidates"), (scored, "4 teacher scores"), (labels, "4 filter and split labels"),
                            (trained, "5 distill"), (ev, "6 evaluate base vs candidate"), (gate, "7 register and gate"),
                            (promoted, "7 promote to champion"), (held_back, "7 keep as challenger"),
                            (closer, "close MLflow run")):
            task.set_display_name(title)
        for task in (gate, promoted, held_back):
            task.set_caching_options(False)
        if platform is not None:
            steps = {"finish": closer, "prepare": prep, "shard_indices": gen_idx, "generate": gen,
                     "generate_merge": queries, "mine": mined, "label": scored, "label_merge": labels,
                     "distill": trained, "evaluate": ev, "register": gate, "promote": promoted, "challenger": held_back}
            for step, task in steps.items():
                platform.apply(task, step)
            platform.apply(lab_idx, "shard_indices")

    return kadet_pipeline


kadet_pipeline = make_pipeline(platform=Platform.load())
