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
        [(encode_q, query_batches), (encode_p, passage_batches)],
        lambda q, p: distill_loss(q, p.view(B, L, -1), teacher),
    )  # parameter .grad fields are filled; call optimizer.step() next
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class _RandState:
    """CPU (and CUDA) RNG state, to replay a chunk's dropout masks."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def grad_cache_step(
    towers: Sequence[tuple],
    loss_fn: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """One GradCache forward/backward.

    ``towers``: for each input kind (queries, passages, ...), ``(encode, chunks)`` or
    ``(encode, chunks, trainable)`` where ``encode(chunk) -> (n, d)``. A tower with
    ``trainable=False`` (a frozen document tower) is encoded once without a graph and gets no
    second pass.
    ``loss_fn`` receives one concatenated embedding tensor per tower. Returns the loss
    (detached); parameter gradients are accumulated into ``.grad``.
    """
    cached: list[torch.Tensor] = []
    states: list[list[_RandState]] = []
    towers = [(t[0], t[1], t[2] if len(t) > 2 else True) for t in towers]
    for encode, chunks, _ in towers:
        reps, st = [], []
        with torch.no_grad():
            for chunk in chunks:
                st.append(_RandState())
                reps.append(encode(chunk))
        cached.append(torch.cat(reps).detach())
        states.append(st)
    leaves = [c.requires_grad_(trainable) for c, (_, _, trainable) in zip(cached, towers)]
    loss = loss_fn(*leaves)
    loss.backward()
    for (encode, chunks, trainable), leaf, st in zip(towers, leaves, states):
        if not trainable:
            continue
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
