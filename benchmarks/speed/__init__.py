"""Speed benchmarks: each prints a table comparing kadet's code with a peer measured in the same
run (``python -m benchmarks.speed.<name> --help``)."""
