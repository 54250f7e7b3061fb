"""Per-id values a router reads: one TorchRec table per field, `width` floats per id,
pooled as the field pools (bags by mean). The labelled clustering variants that route on
statistics of a row's ids (saliency, the id mixture) keep those statistics here, so the
router is one table lookup and the bundle counts its bytes like any other table."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from serving.features import FeatureSpec
from trainer.data.batches import iterate_batches


class IdTables(nn.Module):
    """Row → [B, N, width]: each field's pooled per-id values.

    Args:
        spec: the dataset's fields.
        tables: per field, an array [num_embeddings, width] (or [num_embeddings] for width 1).
        prefix: table name prefix (tables are named <prefix><field>).
    """

    def __init__(self, spec: FeatureSpec, tables: list[np.ndarray], prefix: str):
        super().__init__()
        self.names = list(spec.names)
        arrays = [np.asarray(t, dtype=np.float32).reshape(f.num_embeddings, -1) for f, t in zip(spec.fields, tables)]
        self.width = arrays[0].shape[1]
        configs = [EmbeddingBagConfig(name=f"{prefix}{f.name}", feature_names=[f.name], num_embeddings=f.num_embeddings,
                                      embedding_dim=self.width,
                                      pooling=PoolingType.MEAN if f.kind == "bag" else PoolingType.SUM)
                   for f in spec.fields]
        self.ebc = EmbeddingBagCollection(tables=configs, device="cpu")
        with torch.no_grad():
            for f, a in zip(spec.fields, arrays):
                self.ebc.embedding_bags[f"{prefix}{f.name}"].weight.copy_(torch.from_numpy(a))

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse).to_dict()
        return torch.stack([pooled[n] for n in self.names], dim=1)


def split_ids(ds, split: str, batch_size: int, names: list[str]):
    """Per batch of a split (row order): per field, (ids, lengths) as numpy arrays."""
    for batch in iterate_batches(ds, split, batch_size, shuffle=False, seed=0, epoch=0):
        jt = batch.sparse_features.to_dict()
        yield batch, [(jt[n].values().numpy(), jt[n].lengths().numpy()) for n in names]
