"""The core layer (imports no other kadet layer): the typed config and its profiles, errors, atomic
io and resumable logs, the stages' file layout, storage (local + S3) and the work-dir lock, stage
manifests, the reuse store, progress events."""
