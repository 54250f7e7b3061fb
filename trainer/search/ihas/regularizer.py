"""iHAS gate regularizer: expected L0 plus polarisation (paper Eq. 5).

    R = Σ_i Σ_j ( λ·p_ij − μ·|p_ij − p̄_i| ),   p̄_i = mean_j p_ij

The first term is the expected number of open gates of row i (E‖m_i‖₀ = Σ_j p_ij under
Bernoulli masks); the second rewards probabilities far from their row mean, which
splits each row's gates into a group near 0 and a group near 1 (μ = 0 is ablation
iHAS-3; the paper's formula has μ = 1).

Reduction: the sum over j follows the paper; across rows the default is the *mean*
(``reduction="mean"``), so R sits on the same per-row scale as the mean BCE it is added
to and λ, μ do not change meaning with the batch size. λ is then "BCE units per open
gate per row"; a row with all N* gates open costs λ·N*. ``reduction="sum"`` gives the
paper's literal Σ_i; to reproduce a paper λ used with a summed R and a mean BCE,
divide it by the batch size.

Balance: for a gate above its row mean, dR/dp = λ − μ·(1 − s̄) with s̄ the row mean of
sign(p − p̄) (≈ 0 when the groups are equal-sized). So λ must stay below about μ for
polarisation to push the useful gates *up*; with λ > μ every gate is driven to 0
regardless of the BCE signal.
"""

from __future__ import annotations

import torch


def ihas_regularizer(p: torch.Tensor, lam: float, mu: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Gate regularizer R for a batch of keep-probabilities.

    Args:
        p: [B, N*] gate probabilities (the second output of the gates).
        lam: λ, weight of the expected-L0 term.
        mu: μ, weight of the polarisation term (0 disables it: iHAS-3).
        reduction: "mean" (default) or "sum" over rows; always a sum over the N* gates.

    Returns:
        Scalar tensor, differentiable in p.
    """
    if p.dim() != 2:
        raise ValueError(f"expected p of shape [B, N*], got {tuple(p.shape)}")
    per_row = lam * p.sum(dim=1)
    if mu != 0.0:
        per_row = per_row - mu * (p - p.mean(dim=1, keepdim=True)).abs().sum(dim=1)
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
