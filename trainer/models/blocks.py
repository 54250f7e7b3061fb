"""Building blocks shared by the CTR models."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: list[int], dropout: float = 0.0, out_dim: int | None = 1) -> nn.Sequential:
    """ReLU MLP; `out_dim=None` ends on the last hidden layer (no output projection)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = h
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def stack_zero_padded(embs: list[torch.Tensor], width: int) -> torch.Tensor:
    """[B, N, width] from per-field [B, d_f], zero-padding shorter embeddings at the end.

    This is AIM's Map_i for equal-dim interactions: an inner product between a d_a- and a
    d_b-dim embedding becomes the product over their first min(d_a, d_b) coordinates, so
    a field keeps interacting after a dim search shortened it, with no extra parameters.
    """
    return torch.stack([e if e.shape[1] == width else nn.functional.pad(e, (0, width - e.shape[1])) for e in embs], dim=1)


def tuple_index(tuples: list, p: int) -> torch.Tensor:
    """[p, T] long: column t holds tuple t's p field positions. Built from the transposed
    lists, so it has plain row-major strides even for T = 1 (a transposed [1, p] view is
    "contiguous" with strides (1, p), which DDP's buffer broadcast refuses to write into)."""
    return torch.tensor([list(c) for c in zip(*tuples)] if tuples else [[] for _ in range(p)], dtype=torch.long).reshape(p, -1)


def centre_fields(stacked: torch.Tensor, running: torch.Tensor, momentum: float, training: bool) -> torch.Tensor:
    """[B, N, D] minus each field's mean embedding: the batch mean while training (which also
    moves `running` [N, D] by `momentum`, as batch norm does), `running` in eval. A product
    of centred embeddings has zero mean given any one field's id, so it cannot carry that
    field's main effect."""
    if not training:
        return stacked - running
    mean = stacked.mean(dim=0)
    with torch.no_grad():
        running.lerp_(mean.detach(), momentum)
    return stacked - mean


def fm_interaction(stacked: torch.Tensor, pairs: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_{i<j} <e_i, e_j> per row: over every pair in O(N·d) as ½((Σe)² − Σe²), or over the
    kept `pairs` ([2, P] field indices) only, each times its entry of `weights` ([P]) if given."""
    if pairs is not None:
        inner = pairwise_inner(stacked, pairs)
        return (inner if weights is None else inner * weights).sum(dim=1)
    s = stacked.sum(dim=1)
    return 0.5 * (s.pow(2) - stacked.pow(2).sum(dim=1)).sum(dim=1)


def pairwise_inner(stacked: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """<e_i, e_j> for every i < j as [B, N(N-1)/2], or for the kept `pairs` ([2, P]) as [B, P]."""
    if pairs is not None:
        return (stacked[:, pairs[0]] * stacked[:, pairs[1]]).sum(dim=2)
    n = stacked.shape[1]
    gram = torch.bmm(stacked, stacked.transpose(1, 2))
    i, j = torch.triu_indices(n, n, offset=1, device=stacked.device)
    return gram[:, i, j]


class CrossNetwork(nn.Module):
    """DCN cross layers: x_{l+1} = x_0 · (w_lᵀ x_l) + b_l + x_l.

    Args:
        dim: width of x_0 (the concatenated mixed-dim embeddings: no padding needed).
        layers: number of cross layers.
    """

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(dim) * (1.0 / dim) ** 0.5) for _ in range(layers)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.w, self.b):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return x
