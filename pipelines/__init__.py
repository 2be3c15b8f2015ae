"""The kadet DAG (:mod:`pipelines.kadet_pipeline`), its compile entry point and local runner."""
