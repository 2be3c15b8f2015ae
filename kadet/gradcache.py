"""GradCache (Gao et al., 2021): a large-batch loss with memory bounded by the chunk size.

The loss needs every query and passage embedding of the batch at once, but only the
embeddings, not the activations that produced them. So:

1. encode all inputs chunk by chunk **without** a graph, keep the embeddings;
2. compute the loss on the (leaf) embeddings and backpropagate to them only;
3. re-encode chunk by chunk **with** a graph and backpropagate ``embedding . cached_grad``,
   which accumulates exactly the parameter gradients of the full-batch loss.

Peak activation memory is that of one chunk; the gradients equal the uncached computation
(up to floating point), which tests/test_gradcache.py checks. Random state (dropout) is
saved per chunk in step 1 and restored in step 3, so both passes see the same masks.

Data-parallel (``gather``, see :mod:`kadet.parallel`): each rank's towers hold only its share
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


class _RandState:
    """CPU (and CUDA) RNG state, to replay a chunk's dropout masks."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


Gather = Callable[[torch.Tensor], "tuple[torch.Tensor, int]"]


def grad_cache_step(towers: Sequence[Tower], loss_fn: Callable[..., torch.Tensor],
                    gather: Gather | None = None) -> torch.Tensor:
    """One GradCache forward/backward over ``towers`` (one per input kind: queries, passages).

    ``loss_fn`` receives one concatenated embedding tensor per tower. Returns the loss
    (detached); parameter gradients are accumulated into ``.grad``. ``gather(local) ->
    (full, start)``, when given, joins every rank's cached embeddings and says where this
    rank's rows start (:meth:`kadet.parallel.Ranks.gather`); the caller all-reduces the
    parameter gradients afterwards.
    """
    leaves: list[torch.Tensor] = []
    offsets: list[int] = []
    states: list[list[_RandState]] = []
    for tower in towers:
        reps, st = [], []
        with torch.no_grad():
            for chunk in tower.chunks:
                st.append(_RandState())
                reps.append(tower.encode(chunk))
        local = torch.cat(reps).detach() if reps else torch.empty(0, tower.dim, device=tower.device)
        full, start = gather(local) if gather else (local, 0)
        leaves.append(full.detach().requires_grad_(tower.trainable))
        offsets.append(start)
        states.append(st)
    loss = loss_fn(*leaves)
    loss.backward()
    for tower, leaf, st, start in zip(towers, leaves, states, offsets):
        if not tower.trainable:
            continue
        encode, chunks = tower.encode, tower.chunks
        grads = leaf.grad
        for chunk, state in zip(chunks, st):
            current = _RandState()
            state.restore()
            rep = encode(chunk)
            current.restore()
            n = rep.shape[0]
            if rep.requires_grad:
                rep.backward(gradient=grads[start : start + n].to(rep.dtype))
            start += n
    return loss.detach()
