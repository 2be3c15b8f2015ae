"""The KFP adapter, the only layer that imports kfp: the run parameters' table, the components and
what each runs, the DAG and its compiler, local and remote runs, the Kubeflow Trainer job."""
