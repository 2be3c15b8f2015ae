"""Each process of the multi-GPU distill job (kadet/kubeflow/trainjob.py) runs this::

    torchrun -m kadet.kubeflow.distill_worker <job>

``<job>`` (on the shared work-dir PVC) holds ``config.yaml``, the run's resolved config as the
distill task had it, and ``labels.jsonl``. Every rank reads that config as it is (frozen: no
profile or defaults applied on top), trains beside the others (kadet/stages/distill/parallel.py
reads torchrun's variables), and rank 0 writes ``<job>/out``; the work dir of the job is
``<job>/work``. Its own entry point, not the user's ``kadet distill`` command: nothing of the
config passes through command-line flags.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from kadet.core import lifeline
from kadet.core.io import read_text
from kadet.core.config import frozen_config
from kadet.core.storage import output_dir_for_rank


def run(job_dir: str | Path) -> None:
    """Train this rank's share of the job in ``job_dir``."""
    from kadet.registry.register import find_champion
    from kadet.stages.distill import distill

    lifeline.follow_parent()   # a local job's workers end with the kadet run that started them
    job = Path(job_dir)
    cfg = frozen_config(read_text(job / "config.yaml"), source=str(job / "config.yaml"))
    cfg = dataclasses.replace(cfg, work_dir=str(job / "work"))
    rank = int(os.environ.get("RANK", "0"))
    with output_dir_for_rank(str(job / "out"), rank) as local:
        m = distill(cfg, job / "labels.jsonl", local, find_champion=find_champion)
    if rank == 0:
        print(f"distill: {m.counts['epochs']} epochs, best epoch {m.extra['best_epoch']} "
              f"({m.extra['processes']} processes); wrote {job / 'out'}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun -m kadet.kubeflow.distill_worker JOB_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
