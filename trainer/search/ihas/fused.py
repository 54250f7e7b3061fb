"""The served form of a shared-tables iHAS model: K cluster heads as one block-diagonal MLP.

Scoring every head on every row (SharedTablesModel.score_all) costs, per head, a column
gather and one small matmul per layer: at batch 100 those ~4K extra graph ops, not the
arithmetic, are what makes the routed program slower than Base. Here the heads are merged
into one MLP with Base's number of layers:

* layer 1: one [K·h1, W] matrix over the tables' pooled output as TorchRec returns it (W =
  every stored column, alignment padding included, then the dense inputs); head k's weights
  sit on the columns it reads, zeros elsewhere — the per-field slices, the concatenation and
  the gather all become part of the matmul;
* deeper layers: the heads' layers stacked block-diagonally, so head k's hidden units only
  feed head k's next layer; the last gives the K logits.

A zero weight adds an exact zero to each sum, so each head's logit differs from its own
MLP's only in summation order (~1e-7). With the id-mixture router the K log-likelihoods are
one more [W, K] matmul (ones on each field's mixture columns) plus the log priors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from trainer.search.ihas.shared import SharedTablesModel


def _linears(head: nn.Sequential) -> list[nn.Linear]:
    layers = [m for m in head if isinstance(m, nn.Linear)]
    if any(not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)) for m in head):
        raise ValueError("fused heads need ReLU MLP heads (Linear, ReLU, Dropout)")
    return layers


@torch.no_grad()
def fuse_heads(model: SharedTablesModel, stored: torch.Tensor, width: int) -> nn.Sequential:
    """One ReLU MLP [B, width] → [B, K] equal to the K heads, each reading its own columns.

    Args:
        model: the trained shared-tables model.
        stored: [lookup width] the position in the stored lookup of each column of the
            model's concatenated lookup.
        width: the stored lookup's width plus the dense inputs (the fused first layer's input).
    """
    heads = [_linears(h) for h in model.heads]
    prefix = "lookup_columns" if model.mixture_k else "columns"
    dense = list(range(width - model.n_dense, width))
    layers: list[nn.Module] = []
    for depth in range(len(heads[0])):
        parts = [h[depth] for h in heads]
        out_dim = sum(p.out_features for p in parts)
        in_dim = width if depth == 0 else sum(p.in_features for p in parts)
        fused = nn.Linear(in_dim, out_dim)
        fused.weight.zero_()
        row = col = 0
        for k, p in enumerate(parts):
            rows = slice(row, row + p.out_features)
            if depth == 0:
                cols = stored[getattr(model, f"{prefix}_{k}")].tolist() + dense
                fused.weight[rows, cols] = p.weight
            else:
                fused.weight[rows, col: col + p.in_features] = p.weight
            fused.bias[rows] = p.bias
            row, col = row + p.out_features, col + p.in_features
        layers += [fused, nn.ReLU()] if depth < len(heads[0]) - 1 else [fused]
    return nn.Sequential(*layers).requires_grad_(False)


class FusedRouted(nn.Module):
    """(dense, sparse) → (logits of every cluster's head [B, K], cluster id [B]), as
    SharedTablesModel.score_all computes them, with the heads fused (module docstring)."""

    def __init__(self, model: SharedTablesModel):
        super().__init__()
        # only what scores a row: the tables and the router, not the training model's own heads
        self.ebc = model.embeddings.ebc
        self.router = None if model.mixture_k else model.router
        self.register_buffer("log_prior", model.log_prior if model.mixture_k else None)
        self.n_dense = model.n_dense
        layout, ebc = model.embeddings.layout, model.embeddings.ebc
        # TorchRec's pooled output: each table's features in config order, at the stored width
        self.order = tuple(f for c in ebc.embedding_bag_configs() for f in c.feature_names)
        stored_width = dict(zip(self.order, (c.embedding_dim for c in ebc.embedding_bag_configs())))
        at = dict(zip(self.order, torch.tensor([0] + [stored_width[f] for f in self.order]).cumsum(0).tolist()))
        stored = torch.tensor([at[f] + j for f, d in zip(layout.fields, layout.dims) for j in range(d)], dtype=torch.long)
        self.stored_width = sum(stored_width.values())
        self.heads = fuse_heads(model, stored, self.stored_width + model.n_dense)
        self.register_buffer("unpad", None if self.stored_width == len(stored) else stored)
        self.route_matrix: torch.Tensor | None
        if model.mixture_k:
            m = torch.zeros(self.stored_width, model.mixture_k)
            cols = stored[model.mixture_columns].view(-1, model.mixture_k)  # [fields, K]
            for g in range(model.mixture_k):
                m[cols[:, g], g] = 1.0
            self.register_buffer("route_matrix", m)
        else:
            self.register_buffer("route_matrix", None)

    def forward(self, dense: torch.Tensor, sparse) -> tuple[torch.Tensor, torch.Tensor]:
        kt = self.ebc(sparse)
        if tuple(kt.keys()) != self.order:
            raise RuntimeError(f"lookup keys {kt.keys()} are not the fused layer's order {self.order}")
        stored = kt.values()
        if self.route_matrix is not None:
            clusters = (stored @ self.route_matrix + self.log_prior).argmax(dim=1)
        else:
            clusters = self.router(stored if self.unpad is None else stored.index_select(1, self.unpad))
        x = torch.cat([stored, dense], dim=1) if self.n_dense else stored
        return self.heads(x), clusters
