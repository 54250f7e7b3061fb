"""FeatureSpec + per-field dims → mixed-dimension TorchRec embedding tables.

One table per field, named ``t_<field>``, fed by the feature of the same name. A field
with dim 0 has no table (the field is dropped). FBGEMM's fused TBE kernels need every
table's column count to be a multiple of 4, so a table is *stored* with its dim rounded
up to a multiple of 4 and the pooled output is sliced to the *logical* dim; the extra
columns are never read, so they never receive gradient. `embedding_params` counts logical
parameters (what the architecture needs); `embedding_bytes` counts what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from serving.features import FeatureSpec

FUSED_DIM_ALIGN = 4


def stored_dim(dim: int) -> int:
    return -(-dim // FUSED_DIM_ALIGN) * FUSED_DIM_ALIGN


@dataclass(frozen=True)
class TableLayout:
    """Where each kept field's embedding lives.

    Args:
        fields: kept fields in model order.
        dims: logical dim of each kept field.
        num_embeddings: rows of each kept field's table.
    """

    fields: tuple[str, ...]
    dims: tuple[int, ...]
    num_embeddings: tuple[int, ...]

    @property
    def embedding_params(self) -> int:
        return sum(d * n for d, n in zip(self.dims, self.num_embeddings))

    @property
    def embedding_bytes(self) -> int:
        return sum(stored_dim(d) * n * 4 for d, n in zip(self.dims, self.num_embeddings))


def layout_for(spec: FeatureSpec, dims: dict[str, int]) -> TableLayout:
    kept = [f for f in spec.fields if dims.get(f.name, 0) > 0]
    return TableLayout(
        tuple(f.name for f in kept), tuple(dims[f.name] for f in kept), tuple(f.num_embeddings for f in kept)
    )


def table_configs(
    spec: FeatureSpec, dims: dict[str, int], *, prefix: str = "t_", init_scale: float = 0.01
) -> list[EmbeddingBagConfig]:
    """EmbeddingBagConfigs for the kept fields (bags mean-pooled, single ids sum-pooled)."""
    configs = []
    for f in spec.fields:
        d = dims.get(f.name, 0)
        if d < 0:
            raise ValueError(f"field {f.name!r}: dim {d} < 0")
        if d == 0:
            continue
        configs.append(
            EmbeddingBagConfig(
                name=f"{prefix}{f.name}",
                feature_names=[f.name],
                num_embeddings=f.num_embeddings,
                embedding_dim=stored_dim(d),
                pooling=PoolingType.MEAN if f.kind == "bag" else PoolingType.SUM,
                weight_init_min=-init_scale,
                weight_init_max=init_scale,
            )
        )
    return configs


class FieldEmbeddings(nn.Module):
    """Pooled mixed-dim embeddings of the kept fields, one tensor [B, d_f] per field.

    Args:
        spec: the dataset's fields.
        dims: logical dim per field name (missing or 0 = dropped).
        init_scale: tables start uniform in [-init_scale, init_scale]; small values
            matter for small tables, whose TorchRec default (±sqrt(1/rows)) is large.
        device: "meta" when DistributedModelParallel will materialise the tables.
    """

    def __init__(self, spec: FeatureSpec, dims: dict[str, int], init_scale: float = 0.01, device=None):
        super().__init__()
        self.layout = layout_for(spec, dims)
        configs = table_configs(spec, dims, init_scale=init_scale)
        self.ebc = EmbeddingBagCollection(tables=configs, device=device) if configs else None

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        if self.ebc is None:
            return []
        pooled = self.ebc(sparse).to_dict()
        return [pooled[f][:, :d] for f, d in zip(self.layout.fields, self.layout.dims)]


class LinearWeights(nn.Module):
    """First-order term Σ_f w[id_f] of FM / Wide&Deep / DeepFM, as TorchRec tables.

    Each weight is column 0 of a 4-wide table (the fused-kernel alignment); tables stay
    in TorchRec storage so they shard and use the fused optimizer like the embeddings.
    """

    def __init__(self, spec: FeatureSpec, fields: tuple[str, ...], device=None):
        super().__init__()
        self.fields = fields
        configs = table_configs(spec, {f: 1 for f in fields}, prefix="w_", init_scale=0.0)
        self.ebc = EmbeddingBagCollection(tables=configs, device=device) if configs else None

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse).to_dict()
        return torch.stack([pooled[f][:, 0] for f in self.fields], dim=1).sum(dim=1)
