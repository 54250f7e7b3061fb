"""Clustering rows by what the search-stage network reads from each field (labelled variant,
`search.cluster_on = "saliency"`; not in the paper).

The paper clusters E ⊙ m. When the trained gates come out nearly the same for every row,
no clustering of them can find sub-populations, although the rows' ids may say plainly
which one a row belongs to. This variant clusters on field saliency instead:

    s_f(x) = | Σ_j e_fj(x) · ∂z(x)/∂e_fj |,

how far the supernet's logit z moves with field f's (masked) embedding of row x
(gradient × input, summed over the field's dims; no label involved). Rows whose clicks
depend on different fields show different saliency patterns across the fields.

Serving cannot afford a backward pass per row, so each (field, id) keeps the mean saliency
of the training rows that hold it (one float per id, in a 1-wide TorchRec table; an id no
training row holds reads the field's mean), and a row is routed on the log of its ids'
values, standardized per field over the training rows, to the nearest centroid. The dims
of each cluster still come from the gates' deterministic masks, as in iHAS.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from serving.features import FeatureSpec
from trainer.data.batches import iterate_batches
from trainer.search.ihas.idtables import IdTables, split_ids
from trainer.search.ihas.kmeans import sq_dists

_FLOOR = 1e-8  # saliency of a field the network ignores outright; keeps the log finite


def row_saliency(supernet: nn.Module, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
    """[B, N] field saliency of each row (gates in their current mode)."""
    emb = torch.cat(supernet.base.embeddings(sparse), dim=1).detach().requires_grad_(True)
    mask, _ = supernet.gates(emb.detach())
    sizes = supernet.split_sizes
    logit = supernet.base.score(dense, sparse, list(torch.split(emb * mask, sizes, dim=1)))
    (grad,) = torch.autograd.grad(logit.sum(), emb)
    per_dim = (grad * emb).detach()
    return torch.stack([part.sum(dim=1) for part in torch.split(per_dim, sizes, dim=1)], dim=1).abs()


def saliency_tables(supernet: nn.Module, spec: FeatureSpec, ds, batch_size: int) -> list[np.ndarray]:
    """Per field, the mean saliency of each id over the training rows holding it (a row's
    bag gives its saliency to each id in it); ids no training row holds read the field's mean."""
    sums = [np.zeros(f.num_embeddings) for f in spec.fields]
    counts = [np.zeros(f.num_embeddings) for f in spec.fields]
    for batch, fields in split_ids(ds, "train", batch_size, spec.names):
        sal = row_saliency(supernet, batch.dense_features, batch.sparse_features).numpy()
        for i, (ids, lengths) in enumerate(fields):
            np.add.at(sums[i], ids, np.repeat(sal[:, i], lengths))
            np.add.at(counts[i], ids, 1.0)
    tables = []
    for s, c in zip(sums, counts):
        mean = s.sum() / max(c.sum(), 1.0)
        tables.append(np.where(c > 0, s / np.maximum(c, 1.0), mean).astype(np.float32))
    return tables


class SaliencyFeatures(nn.Module):
    """Row → [B, N] log of its ids' mean saliency (pooled as the field pools: bags by mean).

    Args:
        spec: the dataset's fields.
        tables: per field, one float per id (`saliency_tables`).
    """

    def __init__(self, spec: FeatureSpec, tables: list[np.ndarray]):
        super().__init__()
        self.tables = IdTables(spec, tables, prefix="s_")

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.tables(sparse).squeeze(2).clamp(min=_FLOOR).log()


class SaliencyRouter(nn.Module):
    """Row → cluster id: the row's saliency features, scaled, to the nearest centroid.

    Args:
        features: SaliencyFeatures.
        centroids: [K, N] in the scaled space.
        scale: [N] per-field factors applied before the distance.
    """

    def __init__(self, features: SaliencyFeatures, centroids: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.features = features
        self.register_buffer("centroids", centroids.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return sq_dists(self.features(sparse) * self.scale, self.centroids).argmin(dim=1)


@torch.no_grad()
def saliency_rows(features: SaliencyFeatures, ds, split: str, batch_size: int) -> np.ndarray:
    """[rows, N] SaliencyFeatures of every row of a split, in row order."""
    out = [features(b.sparse_features).numpy()
           for b in iterate_batches(ds, split, batch_size, shuffle=False, seed=0, epoch=0)]
    return np.concatenate(out)


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1 / std) per column; a constant column gets factor 1 (it adds nothing to a distance)."""
    sd = x.std(axis=0)
    return x.mean(axis=0), np.where(sd > 0, 1.0 / np.maximum(sd, 1e-12), 1.0).astype(np.float32)
