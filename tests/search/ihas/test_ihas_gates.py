"""Bernoulli gates: ST Gumbel masks, deterministic masks, open mode, shared gates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.search.ihas.gates import GateMode, InstanceGates, SharedGates
from trainer.search.ihas.threshold import HistogramThreshold

N_STAR = 48  # 3 fields x 16 dims


def embeddings(rows: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, N_STAR, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("cls", [InstanceGates, SharedGates])
def test_stochastic_mask_is_exact_binary_and_backprops(cls):
    torch.manual_seed(0)
    gates = cls(N_STAR)
    gates.mode = "stochastic"
    emb = embeddings()
    mask, p = gates(emb)
    assert mask.shape == p.shape == emb.shape
    assert ((mask == 0) | (mask == 1)).all()
    assert 0 < mask.mean() < 1  # both outcomes occur at init_prob 0.9
    head = torch.nn.Linear(N_STAR, 1)
    labels = torch.randint(0, 2, (emb.shape[0], 1)).float()
    F.binary_cross_entropy_with_logits(head(emb * mask), labels).backward()
    grad = gates.fc.weight.grad if cls is InstanceGates else gates.logit.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_stochastic_mask_is_bernoulli_p_with_select_first():
    torch.manual_seed(0)
    gates = InstanceGates(N_STAR, init_prob=0.3)
    torch.nn.init.zeros_(gates.fc.weight)  # every gate at exactly p = 0.3
    gates.mode = GateMode.STOCHASTIC
    mask, p = gates(embeddings(4000))
    assert torch.allclose(p, torch.full_like(p, 0.3))
    assert mask.mean().item() == pytest.approx(0.3, abs=0.01)


def test_extreme_logits_stay_finite():
    torch.manual_seed(0)
    gates = InstanceGates(N_STAR)
    gates.mode = "stochastic"
    with torch.no_grad():
        gates.fc.bias.copy_(torch.linspace(-200, 200, N_STAR))  # p rounds to exactly 0 or 1
    mask, _ = gates(embeddings(64))
    assert torch.isfinite(mask).all()
    assert (mask[:, :8] == 0).all() and (mask[:, -8:] == 1).all()


def test_init_starts_mostly_open_and_reset_restores_it():
    torch.manual_seed(0)
    gates = InstanceGates(N_STAR, init_prob=0.9)
    assert torch.allclose(gates.fc.bias, torch.full((N_STAR,), math.log(9.0)))
    _, p = gates(embeddings())
    assert p.mean().item() == pytest.approx(0.9, abs=0.01)
    assert p.std(dim=1).min() > 0  # per-row spread: polarisation has a gradient from the start
    with torch.no_grad():
        gates.fc.bias.fill_(-5.0)
    gates.reset_parameters()
    assert gates(embeddings())[1].mean().item() == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("cls", [InstanceGates, SharedGates])
def test_open_mode_is_all_ones(cls):
    gates = cls(N_STAR)
    assert gates.mode is GateMode.OPEN  # the pretraining default
    mask, p = gates(embeddings())
    assert torch.equal(mask, torch.ones_like(mask))
    assert ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("cls", [InstanceGates, SharedGates])
def test_deterministic_mode_is_reproducible_and_uses_no_rng(cls):
    torch.manual_seed(0)
    gates = cls(N_STAR, threshold=HistogramThreshold(bins=10))
    with torch.no_grad():  # spread the probabilities so rows have real valleys
        if cls is InstanceGates:
            gates.fc.weight.mul_(30.0)
        else:
            gates.logit.normal_(0.0, 3.0)
    gates.mode = "deterministic"
    emb = embeddings()
    rng = torch.get_rng_state()
    mask1, p = gates(emb)
    mask2, _ = gates(emb.clone())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(mask1, mask2)
    assert not mask1.requires_grad
    assert torch.equal(mask1, HistogramThreshold(bins=10).mask(p.detach()))
    assert 0 < mask1.mean() < 1


def test_mode_accepts_enum_or_string_and_rejects_typos():
    gates = InstanceGates(N_STAR)
    gates.mode = "deterministic"
    assert gates.mode is GateMode.DETERMINISTIC
    gates.mode = GateMode.OPEN
    assert gates.mode is GateMode.OPEN
    with pytest.raises(ValueError):
        gates.mode = "stochastc"


def test_shared_gates_ignore_embedding_values():
    torch.manual_seed(0)
    gates = SharedGates(N_STAR)
    emb = embeddings(8)
    _, p1 = gates(emb)
    _, p2 = gates(emb * 100 + 3)
    assert torch.equal(p1, p2)
    assert torch.equal(p1, p1[:1].expand_as(p1))
    gates.mode = "stochastic"
    masks = gates(embeddings(512))[0]
    assert (masks != masks[:1]).any()  # one probability vector, but rows sampled independently


def test_rejects_bad_shapes_and_config():
    gates = InstanceGates(N_STAR)
    with pytest.raises(ValueError):
        gates(torch.randn(4, N_STAR + 1))
    with pytest.raises(ValueError):
        gates(torch.randn(N_STAR))
    with pytest.raises(ValueError):
        InstanceGates(N_STAR, init_prob=1.0)
    with pytest.raises(ValueError):
        SharedGates(N_STAR, tau=0.0)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_closed_form_matches_two_class_gumbel_softmax(tau):
    """The Gumbel-sigmoid form draws the same soft 'select' values as F.gumbel_softmax over
    (log p, log(1 − p)): compare quantiles of 200k draws at a few logits."""
    from trainer.search.ihas.gates import straight_through_gumbel

    torch.manual_seed(0)
    z = torch.tensor([-1.5, 0.0, 0.7, 2.2]).repeat(200_000, 1)
    z.requires_grad_(True)
    ours = straight_through_gumbel(z, tau)
    ours.sum().backward()
    two_way = torch.stack([F.logsigmoid(z.detach()), F.logsigmoid(-z.detach())], dim=-1)
    reference = F.gumbel_softmax(two_way, tau=tau, hard=False, dim=-1)[..., 0]
    u = torch.rand_like(z).clamp_(1e-10, 1 - 1e-7)
    closed = torch.sigmoid((z.detach() + torch.log(u) - torch.log1p(-u)) / tau)
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    for col in range(z.shape[1]):
        assert torch.allclose(torch.quantile(closed[:, col], qs), torch.quantile(reference[:, col], qs), atol=0.01)
        assert (ours[:, col].detach().mean() - torch.sigmoid(z[0, col].detach())).abs() < 0.005  # Bernoulli(p) forward
    assert ((ours == 0) | (ours == 1)).all()
    assert torch.isfinite(z.grad).all() and (z.grad >= 0).all() and (z.grad.sum(0) > 0).all()
