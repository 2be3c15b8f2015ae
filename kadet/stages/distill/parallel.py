"""Data-parallel distillation: ``torchrun --nproc_per_node N`` runs N ranks of one training.

Each rank takes a contiguous 1/N of every GradCache batch (:func:`shard`), encodes only its
share without a graph, and :meth:`Ranks.gather` concatenates every rank's cached embeddings in
batch order. Every rank then computes the *same* full-batch loss on them (the in-batch negatives
of InfoNCE and the teacher lists need the whole batch), backpropagates to the cached embeddings,
keeps the gradient of its own rows, re-encodes its rows with a graph and backpropagates those.
:meth:`Ranks.all_reduce_grads` sums the parameter gradients over ranks: the sum is exactly the
full-batch gradient, so every rank takes the same optimizer step and the weights stay equal on
all ranks, and equal (up to float summation order) to a single-process run on the same data.
(``DistributedDataParallel`` itself is not used: GradCache runs one backward per chunk, and DDP's
reducer expects one per step; the explicit all-reduce after the last chunk is what it would do.)

One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets :class:`Ranks` of size 1, whose methods
are the identity, so the trainer has one code path. Backend: NCCL on CUDA, gloo on CPU.

    torchrun --nproc_per_node 2 --no-python kadet distill --labels labels.jsonl --output out/
"""

from __future__ import annotations

import datetime
import logging
import os

import torch

log = logging.getLogger(__name__)


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of ``n`` rows that ``rank`` of ``world`` takes; sizes
    differ by at most one, lower ranks take the extra rows (a rank may get none)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class Ranks:
    """This process's place in a data-parallel training (size 1 when alone)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owns_group: bool = False):
        self.rank, self.world, self.local_rank, self.owns_group = rank, world, local_rank, owns_group

    @classmethod
    def from_env(cls, device: str) -> "Ranks":
        """Join the process group torchrun describes in the environment (``WORLD_SIZE``,
        ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); size 1 without one."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
            owns = True
        ranks = cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)
        log.info("distill: rank %d of %d (%s)", ranks.rank, ranks.world, dist.get_backend())
        return ranks

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes files and shows progress."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """One GPU per rank: ``cuda`` becomes ``cuda:<LOCAL_RANK>``."""
        if self.parallel and device == "cuda":
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return device

    def share(self, rows: list) -> list:
        lo, hi = shard(len(rows), self.rank, self.world)
        return rows[lo:hi]

    def gather(self, local: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's ``local`` rows concatenated in rank order, and where this rank's start."""
        if not self.parallel:
            return local, 0
        import torch.distributed as dist

        n = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        top = max(sizes)
        padded = torch.zeros((top, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        full = torch.cat([p[:s] for p, s in zip(parts, sizes)])
        return full, sum(sizes[: self.rank])

    def all_reduce_grads(self, params: list[torch.Tensor]) -> None:
        """Sum every parameter's gradient over the ranks (a rank with no rows adds zeros)."""
        if not self.parallel:
            return
        import torch.distributed as dist

        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        start = 0
        for g in grads:
            g.copy_(flat[start : start + g.numel()].view_as(g))
            start += g.numel()

    def barrier(self) -> None:
        if self.parallel:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
