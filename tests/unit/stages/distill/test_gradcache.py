"""GradCache gives the gradients of the uncached full-batch loss, chunk size notwithstanding."""

from __future__ import annotations

import pytest
import torch

from kadet.stages.distill.gradcache import Tower as GCTower, grad_cache_step
from kadet.stages.distill.losses import distill_loss


class Tower(torch.nn.Module):
    def __init__(self, d_in=12, d=6):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.Tanh(), torch.nn.Linear(16, d))

    def forward(self, x):
        return self.net(x)


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_gradcache_equals_uncached(chunk):
    """A deterministic encoder (no dropout: GradCache replays no random state, see kadet.stages.distill.gradcache)."""
    torch.manual_seed(0)
    b, l = 8, 5
    # float64: chunked and full-batch matmuls sum in different orders, and in float32 that alone
    # moved a gradient by 1.3e-6 on a busy machine; in float64 any real mismatch still shows
    q_in, p_in = torch.randn(b, 12, dtype=torch.float64), torch.randn(b * l, 12, dtype=torch.float64)
    teacher = torch.sort(torch.rand(b, l), dim=1, descending=True).values
    model = Tower().double()

    def loss_fn(q, p):
        return distill_loss(q, p.view(b, l, -1), teacher)

    q_chunks, p_chunks = list(q_in.split(chunk)), list(p_in.split(chunk))

    # the full-batch loss with a graph, backpropagated in one go
    q, p = model(q_in), model(p_in)
    ref = loss_fn(q, p)
    ref.backward()
    want = _grads(model)
    model.zero_grad()

    loss = grad_cache_step([GCTower(model, q_chunks), GCTower(model, p_chunks)], loss_fn)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, w in zip(_grads(model), want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_frozen_tower_gets_no_second_pass():
    torch.manual_seed(0)
    q_model, d_model = Tower(), Tower()
    for p in d_model.parameters():
        p.requires_grad_(False)
    calls = []

    def enc_d(x):
        calls.append(1)
        return d_model(x)

    q_in, p_in = torch.randn(4, 12), torch.randn(12, 12)
    teacher = torch.tensor([[1.0, 0.5, 0.1]] * 4)
    grad_cache_step([GCTower(q_model, list(q_in.split(2))), GCTower(enc_d, list(p_in.split(4)), trainable=False)],
                    lambda q, p: distill_loss(q, p.view(4, 3, -1), teacher))
    assert len(calls) == 3  # each chunk of the frozen tower encoded once
    assert all(p.grad is None for p in d_model.parameters())
    assert all(p.grad is not None for p in q_model.parameters())
