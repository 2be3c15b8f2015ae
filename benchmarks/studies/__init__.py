"""Research studies: what moves retrieval quality and whether the gate can be trusted; rows are
appended to ``benchmarks/results/<name>.jsonl`` (``python -m benchmarks.studies.<name> --table``)."""
