"""Gate regularizer: value, reductions, and polarisation vs plain L0 on a toy problem."""

from __future__ import annotations

import pytest
import torch

from trainer.search.ihas.regularizer import ihas_regularizer
from trainer.search.ihas.threshold import HistogramThreshold, bin_counts, first_valley


def test_value_matches_formula():
    p = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    # row 0: Σp = 2.0, Σ|p - 0.5| = 0.8; row 1: Σp = 0.8, Σ|p - p̄| = 0
    lam, mu = 0.3, 0.7
    rows = torch.tensor([lam * 2.0 - mu * 0.8, lam * 0.8])
    assert ihas_regularizer(p, lam, mu).item() == pytest.approx(rows.mean().item())
    assert ihas_regularizer(p, lam, mu, reduction="sum").item() == pytest.approx(rows.sum().item())
    assert ihas_regularizer(p, lam, mu=0.0).item() == pytest.approx(lam * 1.4)


def test_gradient_direction_depends_on_lambda_vs_mu():
    p = torch.tensor([[0.2, 0.4, 0.6, 0.8]], requires_grad=True)
    ihas_regularizer(p, lam=0.1, mu=1.0).backward()
    assert (p.grad[0, 2:] < 0).all() and (p.grad[0, :2] > 0).all()  # descent splits the row
    p.grad = None
    ihas_regularizer(p, lam=2.0, mu=1.0).backward()
    assert (p.grad > 0).all()  # λ > μ: every gate is pushed down


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        ihas_regularizer(torch.rand(4), 0.1)
    with pytest.raises(ValueError):
        ihas_regularizer(torch.rand(2, 4), 0.1, reduction="max")


def optimise_free_logits(mu: float, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise R over free gate logits (a unimodal start, no task signal) with Adam."""
    z0 = 1.0 + torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    z = z0.clone().requires_grad_()
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        loss = ihas_regularizer(torch.sigmoid(z), lam=0.2, mu=mu)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z0, torch.sigmoid(z.detach())


def test_polarisation_splits_probabilities_where_plain_l0_does_not():
    z0, p_pol = optimise_free_logits(mu=1.0)
    _, p_l0 = optimise_free_logits(mu=0.0)
    th = HistogramThreshold()

    # With polarisation: two groups at the ends, an empty middle, a valley in every row.
    assert ((p_pol > 0.1) & (p_pol < 0.9)).float().mean() < 0.01
    assert p_pol.std(dim=1).min() > 0.4
    assert first_valley(bin_counts(p_pol, 10))[1].all()
    mask = th.mask(p_pol).bool()
    assert 0.2 < mask.float().mean() < 0.8
    # The split keeps each row's initial ordering: every opened gate started above every closed one.
    lowest_open = torch.where(mask, z0, torch.inf).amin(dim=1)
    highest_closed = torch.where(mask, -torch.inf, z0).amax(dim=1)
    assert (lowest_open > highest_closed).all()

    # Plain L0: the whole row slides towards 0 together; no spread, no valley, nothing opens.
    assert p_l0.std(dim=1).max() < 0.01
    assert not first_valley(bin_counts(p_l0, 10))[1].any()
    assert not th.mask(p_l0).any()
