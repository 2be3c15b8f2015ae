"""GradCache (Gao et al., 2021): a large-batch loss with memory bounded by the chunk size.

The loss needs every query and passage embedding of the batch at once, but only the
embeddings, not the activations that produced them. So:

1. encode all inputs chunk by chunk **without** a graph, keep the embeddings;
2. compute the loss on the (leaf) embeddings and backpropagate to them only;
3. re-encode chunk by chunk **with** a graph and backpropagate ``embedding . cached_grad``,
   which accumulates exactly the parameter gradients of the full-batch loss.

Peak activation memory is that of one chunk; the gradients equal the uncached computation
(up to floating point), which tests/unit/stages/distill/test_gradcache.py checks. That needs ``encode`` to be
deterministic: step 3 must get the embeddings step 1 got. No random state is replayed between
the passes, so the model must have no dropout active (the distill trainer turns dropout off, as
METHOD.md's recipe says, and checks it: :func:`kadet.stages.distill.start.no_dropout`).

Data-parallel (``gather``, see :mod:`kadet.stages.distill.parallel`): each rank's towers hold only its share
of the batch; after step 1 the cached embeddings of all ranks are gathered, every rank computes
the full-batch loss, and step 3 backpropagates the gradient of this rank's own rows only::

    loss = grad_cache_step(
        [Tower(encode_q, query_batches), Tower(encode_p, passage_batches)],
        lambda q, p: distill_loss(q, p.view(B, L, -1), teacher),
    )  # parameter .grad fields are filled; call optimizer.step() next
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Tower:
    """One input kind of a GradCache step: ``encode(chunk) -> (n, d)`` over ``chunks``.

    ``trainable=False`` (a frozen document tower) is encoded once without a graph and gets no
    second pass.
    """

    encode: Callable[[Any], torch.Tensor]
    chunks: Sequence[Any]
    trainable: bool = True
    dim: int = 0  # embedding width and device, for a rank whose share of the batch is empty
    device: str = "cpu"

    def encode_all(self) -> torch.Tensor:
        """Every chunk encoded and concatenated (no caching: for evaluation under no_grad)."""
        if not self.chunks:
            return torch.empty(0, self.dim, device=self.device)
        return torch.cat([self.encode(c) for c in self.chunks])


Gather = Callable[[torch.Tensor], "tuple[torch.Tensor, int]"]


def grad_cache_step(towers: Sequence[Tower], loss_fn: Callable[..., torch.Tensor],
                    gather: Gather | None = None) -> torch.Tensor:
    """One GradCache forward/backward over ``towers`` (one per input kind: queries, passages).

    ``loss_fn`` receives one concatenated embedding tensor per tower. Returns the loss
    (detached); parameter gradients are accumulated into ``.grad``. ``gather(local) ->
    (full, start)``, when given, joins every rank's cached embeddings and says where this
    rank's rows start (:meth:`kadet.stages.distill.parallel.Ranks.gather`); the caller all-reduces the
    parameter gradients afterwards.
    """
    leaves: list[torch.Tensor] = []
    offsets: list[int] = []
    for tower in towers:
        with torch.no_grad():
            reps = [tower.encode(chunk) for chunk in tower.chunks]
        local = torch.cat(reps).detach() if reps else torch.empty(0, tower.dim, device=tower.device)
        full, start = gather(local) if gather else (local, 0)
        leaves.append(full.detach().requires_grad_(tower.trainable))
        offsets.append(start)
    loss = loss_fn(*leaves)
    loss.backward()
    for tower, leaf, start in zip(towers, leaves, offsets):
        if not tower.trainable:
            continue
        grads = leaf.grad
        for chunk in tower.chunks:
            rep = tower.encode(chunk)
            n = rep.shape[0]
            if rep.requires_grad:
                rep.backward(gradient=grads[start : start + n].to(rep.dtype))
            start += n
    return loss.detach()
