"""The user's tools beside the pipeline: judge, export, plan, prune, teacher-report, data get."""
