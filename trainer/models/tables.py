"""FeatureSpec + per-field dims → mixed-dimension TorchRec embedding tables.

One table per field, named ``t_<field>``, fed by the feature of the same name. A field
with dim 0 has no table (the field is dropped). Tables are stored at the FBGEMM-aligned
width (trainer.models.layout.stored_dim) and the pooled output is sliced to the logical
dim; the extra columns are never read, so they never receive gradient.

First-order weights (FM / Wide&Deep / DeepFM) live either in their own 1-wide tables
(`LinearWeights`, tables ``w_<field>``) or, with `first_order_column`, as column d_f of the
field's own table (d_f + 1 wide, so usually inside the alignment padding). The column
layout needs one lookup per id instead of two, which halves the FBGEMM work per step
(its CPU backward costs about the same for a 4-wide as for a 16-wide table); the price
is that row-wise Adagrad shares one accumulator between a row's embedding and its weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from serving.features import FeatureSpec
from trainer.models.layout import DERIVED, layout_for, stored_dim

@dataclass(frozen=True)
class FirstOrderColumnInit:
    """Uniform in ±scale, then the first-order column at 0 (as its own table would start).

    Also the config's `init_fn`, so unsharded tables start the same way.
    """

    scale: float
    column: int

    @torch.no_grad()
    def __call__(self, weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        weight.uniform_(-self.scale, self.scale, generator=generator)
        # Sharded modules also call this on their local pieces (maybe empty, or a column
        # slice) before trainer.distributed.init_tables overwrites them from the full draw.
        if weight.dim() == 2 and weight.shape[1] > self.column:
            weight[:, self.column] = 0.0
        return weight


def table_configs(
    spec: FeatureSpec, dims: dict[str, int], *, prefix: str = "t_", init_scale: float = 0.01,
    first_order_column: bool = False,
) -> list[EmbeddingBagConfig]:
    """EmbeddingBagConfigs for the kept fields (bags mean-pooled, single ids sum-pooled).

    With `first_order_column` every field gets a table, one column wider than its dim
    (a dropped field keeps a table holding only its first-order weight).
    """
    configs = []
    for f in spec.fields:
        d = dims.get(f.name, 0)
        if d < 0:
            raise ValueError(f"field {f.name!r}: dim {d} < 0")
        width = d + 1 if first_order_column else d
        if width == 0:
            continue
        init = FirstOrderColumnInit(init_scale, d) if first_order_column else None
        configs.append(
            EmbeddingBagConfig(
                name=f"{prefix}{f.name}",
                feature_names=[f.name],
                num_embeddings=f.num_embeddings,
                embedding_dim=stored_dim(width),
                pooling=PoolingType.MEAN if f.kind == "bag" else PoolingType.SUM,
                weight_init_min=-init_scale,
                weight_init_max=init_scale,
                **({"init_fn": init} if init else {}),
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
        first_order_column: also hold every field's first-order weight, in column d_f.
    """

    def __init__(self, spec: FeatureSpec, dims: dict[str, int], init_scale: float = 0.01, device=None,
                 first_order_column: bool = False):
        super().__init__()
        self.layout = layout_for(spec, dims)
        self.first_order = {n: dims.get(n, 0) for n in spec.names} if first_order_column else {}
        self.first_order_in_column = first_order_column
        configs = table_configs(spec, dims, init_scale=init_scale, first_order_column=first_order_column)
        self.ebc = EmbeddingBagCollection(tables=configs, device=device) if configs else None
        # Every table equally wide and every field at one dim (the common, unsearched case):
        # the lookup is then read as one [B, N, width] view instead of N slices, which saves
        # 2N small backward ops per step.
        uniform = (len({c.embedding_dim for c in configs}) == 1 and len(set(self.layout.dims)) == 1
                   and len(configs) == len(self.layout.fields))
        self._uniform_order = tuple(f for c in configs for f in c.feature_names) if uniform else None

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        return self.lookup(sparse)[0]

    def lookup(self, sparse: KeyedJaggedTensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(per-field embeddings, Σ_f first-order weights [B] or None) from one table lookup."""
        if self.ebc is None:
            return [], None
        kt = self.ebc(sparse)
        if self._uniform_order is not None and tuple(kt.keys()) == self._uniform_order:
            d = self.layout.dims[0]
            rows = kt.values().view(-1, len(self._uniform_order), kt.values().shape[1] // len(self._uniform_order))
            embs = list(rows[:, :, :d].unbind(dim=1))
            return embs, rows[:, :, d].sum(dim=1) if self.first_order else None
        pooled = kt.to_dict()
        embs = [pooled[f][:, :d] for f, d in zip(self.layout.fields, self.layout.dims)]
        if not self.first_order:
            return embs, None
        return embs, torch.stack([pooled[f][:, col] for f, col in self.first_order.items()], dim=1).sum(dim=1)


class LinearWeights(nn.Module):
    """First-order term Σ_f w[id_f] of FM / Wide&Deep / DeepFM, as TorchRec tables.

    Each weight is column 0 of a 4-wide table (the fused-kernel alignment); tables stay
    in TorchRec storage so they shard and use the fused optimizer like the embeddings.
    A field named in `shared` (field → n_full) keeps n_full + 1 weights: its ids
    >= n_full (the low-frequency ids of a compressed field) share weight n_full, as an
    "others" field's ids share its row; the table then reads the derived feature
    ``<field>:w``, the clamped ids, which the module computes itself.
    """

    def __init__(self, spec: FeatureSpec, fields: tuple[str, ...], device=None, shared: dict[str, int] | None = None):
        super().__init__()
        self.fields = fields
        self.shared = dict(shared or {})
        configs = table_configs(spec, {f: 1 for f in fields}, prefix="w_", init_scale=0.0)
        configs = [replace(c, num_embeddings=self.shared[f] + 1, feature_names=[f"{f}{DERIVED}w"]) if f in self.shared else c
                   for c, f in zip(configs, fields)]
        self.ebc = EmbeddingBagCollection(tables=configs, device=device) if configs else None

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        if self.shared:
            sparse = self._clamped(sparse)
        pooled = self.ebc(sparse).to_dict()
        return torch.stack([pooled[self.feature(f)][:, 0] for f in self.fields], dim=1).sum(dim=1)

    def feature(self, f: str) -> str:
        return f"{f}{DERIVED}w" if f in self.shared else f

    def _clamped(self, sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
        fields = sparse.to_dict()
        values = [fields[f].values().clamp(max=self.shared[f]) if f in self.shared else fields[f].values() for f in self.fields]
        return KeyedJaggedTensor(keys=[self.feature(f) for f in self.fields], values=torch.cat(values),
                                 lengths=torch.cat([fields[f].lengths() for f in self.fields]),
                                 stride=fields[self.fields[0]].lengths().shape[0], length_per_key=[v.shape[0] for v in values])
