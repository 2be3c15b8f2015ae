"""kadet: adapt a dense-retrieval embedding model to one corpus (CADET method) on Kubeflow."""

__version__ = "0.1.0"
