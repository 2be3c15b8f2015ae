"""The DAG's stages: fingerprint, preflight, prepare, generate, mine, label, distill, evaluate. Each
reads and writes documented files with a manifest; none knows the registry, the reports or KFP."""
