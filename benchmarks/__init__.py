"""kadet's benchmarks, run as modules from the repository root (``python -m benchmarks.speed.encode``):

- :mod:`benchmarks.speed`: throughput, memory and scaling of kadet's stages against a peer in the same run;
- :mod:`benchmarks.studies`: research studies of adaptation quality (recipes, regimes, the gate,
  document-side tuning, retraining), their rows kept in ``benchmarks/results/*.jsonl``.
"""
