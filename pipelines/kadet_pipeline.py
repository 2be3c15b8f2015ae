"""The kadet DAG: prepare -> generate (sharded) -> mine -> label (sharded) -> distill ->
evaluate -> register -> promote (``dsl.If``) or mark challenger (``dsl.Else``).

Compile it (the committed ``pipelines/kadet_pipeline.yaml`` must equal this output; CI checks):

    python -m pipelines.compile                 # writes pipelines/kadet_pipeline.yaml
    python -m pipelines.compile --check         # exit 1 if the committed YAML is stale

Settings: the ``profile`` (packaged ``gpu`` by default; ``local``; "" = kadet's defaults), then
``config_yaml`` (any kadet YAML), then the UI parameters that are set: each defaults to "not set"
(-1, "" or {}), which leaves its key to the profile and config_yaml.

Every task gets the pipeline run's id, so MLflow can nest each stage's run under one parent run.
Caching is on for the data stages (prepare ... evaluate); the registry steps never cache.
"""


from kfp import dsl

import components
from kadet.steps import NOT_SET
from pipelines.platform import Platform

PIPELINE_NAME = "kadet"
#: Tasks whose result depends on the MLflow registry's state, not only on their inputs.
UNCACHED = ("register", "promote", "challenger")


def make_pipeline(base_image: str | None = None, platform: Platform | None = None, gpu_image: str | None = None):
    """The pipeline function, its components built on ``base_image``; ``platform`` (GPU, PVC,
    Secrets, node selectors: ``pipelines/platform.yaml``) is applied for a cluster, whose GPU
    steps then run on ``gpu_image``."""
    c = components.build(base_image)
    if platform is not None:
        g = components.build(gpu_image or components.gpu_image())
        for step in platform.gpu_steps:
            setattr(c, step, getattr(g, step))

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
        run = dsl.PIPELINE_JOB_ID_PLACEHOLDER
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
                                **common)
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
