"""The kadet DAG (:mod:`kadet.kubeflow.pipeline`), its compile entry point and local runner."""
