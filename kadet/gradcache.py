"""GradCache (Gao et al., 2021): a large-batch loss with memory bounded by the chunk size.

The loss needs every query and passage embedding of the batch at once, but only the
embeddings, not the activations that produced them. So:

1. encode all inputs chunk by chunk **without** a graph, keep the embeddings;
2. compute the loss on the (leaf) embeddings and backpropagate to them only;
3. re-encode chunk by chunk **with** a graph and backpropagate ``embedding . cached_grad``,
   which accumulates exactly the parameter gradients of the full-batch loss.

Peak activation memory is that of one chunk; the gradients equal the uncached computation
(up to floating point), which tests/test_gradcache.py checks. Random state (dropout) is
saved per chunk in step 1 and restored in step 3, so both passes see the same masks::

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

    def encode_all(self) -> torch.Tensor:
        """Every chunk encoded and concatenated (no caching: for evaluation under no_grad)."""
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


def grad_cache_step(towers: Sequence[Tower], loss_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """One GradCache forward/backward over ``towers`` (one per input kind: queries, passages).

    ``loss_fn`` receives one concatenated embedding tensor per tower. Returns the loss
    (detached); parameter gradients are accumulated into ``.grad``.
    """
    cached: list[torch.Tensor] = []
    states: list[list[_RandState]] = []
    for encode, chunks in ((t.encode, t.chunks) for t in towers):
        reps, st = [], []
        with torch.no_grad():
            for chunk in chunks:
                st.append(_RandState())
                reps.append(encode(chunk))
        cached.append(torch.cat(reps).detach())
        states.append(st)
    leaves = [c.requires_grad_(t.trainable) for c, t in zip(cached, towers)]
    loss = loss_fn(*leaves)
    loss.backward()
    for tower, leaf, st in zip(towers, leaves, states):
        if not tower.trainable:
            continue
        encode, chunks = tower.encode, tower.chunks
        grads = leaf.grad
        start = 0
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
