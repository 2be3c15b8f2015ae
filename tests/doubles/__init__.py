"""Test doubles and test data, importable by the tests and by benchmarks/ (never the reverse):

- :mod:`tests.doubles.servers`: free ports, the llama.cpp server, a FAKE fault-injection HTTP server;
- :mod:`tests.doubles.s3server`: a real S3 server (``rclone serve s3``) on 127.0.0.1;
- :mod:`tests.doubles.mlflowserver`: a real ``mlflow server`` on 127.0.0.1;
- :mod:`tests.doubles.mlflowfaults`: a FAKE MLflow client for fault injection (wraps the real one, fails once);
- :mod:`tests.doubles.kfpdouble`: a local HTTP double of the KFP v2beta1 API;
- :mod:`tests.doubles.data`: tiny BEIR folders, real SciFact slices, a tiny random model;
- :mod:`tests.doubles.browser`: Debian's chromium, headless, for the judge page.

Where the shared data lives and the offline environment are the library's own
(:func:`kadet.tools.datasets.find_shared_data`, :func:`kadet.kit.models.offline_env`).
"""
