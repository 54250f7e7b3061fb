"""The iHAS search-stage network and the router it leaves behind.

`GatedSupernet` puts Bernoulli gates between a base model's embeddings and its head:
E (the concatenated d-dim embeddings of all N fields) → mask m from the gates →
E ⊙ m → the base head. `Router` is what inference keeps of it: the base tables, the
gates in deterministic mode and the K-means centroids; it maps a row to its cluster.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from trainer.models.ctr import CTRModel
from trainer.search.ihas.kmeans import sq_dists
from trainer.search.ihas.gates import GateMode, InstanceGates, SharedGates


class GatedSupernet(nn.Module):
    """Base model with instance-wise gates on its concatenated embedding.

    Args:
        base: a CTR model whose fields all share one dim d (the search space).
        gates: InstanceGates or SharedGates of width N·d.
    """

    def __init__(self, base: CTRModel, gates: InstanceGates | SharedGates):
        super().__init__()
        dims = set(base.embeddings.layout.dims)
        if len(dims) != 1:
            raise ValueError(f"iHAS searches from equal dims per field, got {sorted(dims)}")
        self.base = base
        self.gates = gates
        self.last_p: torch.Tensor | None = None  # the regularizer reads the latest probabilities

    @property
    def split_sizes(self) -> list[int]:
        return list(self.base.embeddings.layout.dims)

    def masked_embedding(self, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E ⊙ m, m, p) for a batch, in the gates' current mode."""
        f = gate_features(self.base.embeddings, self.gates, sparse, ("masked", "mask", "prob"))
        return f["masked"], f["mask"], f["prob"]

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        masked, _, p = self.masked_embedding(sparse)
        self.last_p = p
        return self.base.score(dense, sparse, list(torch.split(masked, self.split_sizes, dim=1)))


def gate_features(embeddings: nn.Module, gates: nn.Module, sparse: KeyedJaggedTensor,
                  kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The `kinds` the clustering may read for a batch, computed only as far as they need:
    "masked" (E ⊙ m), "mask" (m), "prob" (p) and "logit" (the gates' pre-sigmoid logits,
    which polarised probabilities squash to 0 / 1)."""
    emb = torch.cat(embeddings(sparse), dim=1)
    out = {}
    if {"masked", "mask", "prob"} & set(kinds):
        mask, p = gates(emb)
        out = {"masked": emb * mask, "mask": mask, "prob": p}
    if "logit" in kinds:
        out["logit"] = gates.logits(emb)
    return {k: out[k] for k in kinds}


class Router(nn.Module):
    """Row → iHAS cluster id: base tables + deterministic gates + nearest centroid.

    Args:
        supernet: the trained search-stage network (its tables and gates are reused).
        centroids: [K, N·d] K-means centroids of the clustered features.
        features: what was clustered (`gate_features`; "masked" is the paper's).
        scale: [N·d] factors applied to the features before the distance, or None.
    """

    def __init__(self, supernet: GatedSupernet, centroids: torch.Tensor, features: str = "masked",
                 scale: torch.Tensor | None = None):
        super().__init__()
        self.embeddings = supernet.base.embeddings
        self.gates = supernet.gates
        self.gates.mode = GateMode.DETERMINISTIC
        self.features = features
        self.register_buffer("centroids", centroids.detach().clone())
        self.register_buffer("scale", None if scale is None else scale.detach().clone())

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        x = gate_features(self.embeddings, self.gates, sparse, (self.features,))[self.features]
        if self.scale is not None:
            x = x * self.scale
        # Same distance as MiniBatchKMeans.assign (cdist switches algorithm with the batch size,
        # which an exported program cannot follow).
        return sq_dists(x, self.centroids).argmin(dim=1)
