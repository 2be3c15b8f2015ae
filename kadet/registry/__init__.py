"""MLflow: tracking (a parent run per pipeline run, a nested run per stage) and the model registry
(the gate, versions, aliases, lineage)."""
