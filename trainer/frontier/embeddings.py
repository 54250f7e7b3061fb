"""Embedding storage forms the compression frontier compares beside the stack's own.

Three modules, each with the interface every embeddings module of the stack exposes
(`layout`, `lookup(sparse) -> (per-field embeddings, first-order sum or None)`,
`first_order_in_column`), so any head of trainer.models.ctr runs over them and the
export path writes them like any other model:

* `MappedEmbeddings`: each field's ids are mapped to fewer rows of one table.
  "hash" (the hashing trick): id → mix32(id) mod B, a fixed integer hash, so which ids
  collide does not depend on how frequent they are (the frequency order of the
  vocabulary would otherwise give the B most frequent ids rows of their own). A field
  with at most B ids keeps one row per id: hashing it would only add collisions.
  "others": ids at or above the field's frequent count share one row (`n_full`).
* `TwoTierEmbeddings` (mixed dimensions by frequency): frequent ids keep rows of the
  field's dim X; low-frequency ids get rows of a smaller dim x, projected to X by one
  learned x → X matrix per field. The projection is linear, so summing a bag's ids
  before or after it gives the same vector and bags stay exact.
* `QREmbeddings` (quotient-remainder compositional embeddings, Shi et al. 2020): a field
  with more than B ids stores a quotient table of ⌈V / B⌉ rows and a remainder table of B
  rows; id i reads q[i // B] and r[i mod B], two ids never share both. A single-id field
  combines them by element-wise product (the paper's best operation; both tables start
  uniform in ±√init_scale, so a product starts at the scale other schemes' rows start
  at); a bag field by their sum, which commutes with the bag's mean (a product of pooled
  rows would not be the pool of products). The first-order weight is the sum of the two
  rows' first-order columns.

The mapping is computed inside the module, so it is part of the exported program and a
served request carries the field's plain ids; the tables read features named
``<field>:<tag>``, which the bundle treats as derived from the field.

Every per-id row also holds the id's first-order weight (in column X, resp. x) when the
head has a first-order term: a compression scheme that kept one full-precision weight
per id would keep a per-id table of 4-wide FBGEMM rows beside the compressed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from serving.contract import DERIVED_SEP
from serving.features import FeatureSpec
from trainer.models.layout import stored_dim
from trainer.models.tables import FirstOrderColumnInit

MAPPINGS = ("hash", "others")
_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd 28-bit multiplier: id (< 2^32) × it stays inside int64


def mix32(ids: torch.Tensor) -> torch.Tensor:
    """A fixed 32-bit integer mix (xor-shift, multiply, twice), in int64 arithmetic that
    never overflows, so the exported program computes the same buckets as training."""
    x = ids.long() & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MIX) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MIX) & _MASK32
    return x ^ (x >> 16)


@dataclass(frozen=True)
class StoredLayout:
    """What the stack reads from an embeddings module's `layout` (models: fields and dims;
    reports: parameters and stored bytes of the per-id tables).

    Args:
        fields: kept fields in model order.
        dims: the embedding dim each field outputs.
        embedding_params: logical per-id parameters (rows × logical width, first-order included).
        embedding_bytes: bytes of the stored per-id tables (FBGEMM-aligned widths, fp32).
    """

    fields: tuple[str, ...]
    dims: tuple[int, ...]
    embedding_params: int
    embedding_bytes: int


def _config(name: str, feature: str, rows: int, width: int, bag: bool, init_scale: float, fo_column: int | None,
            weighted: bool) -> EmbeddingBagConfig:
    init = FirstOrderColumnInit(init_scale, fo_column) if fo_column is not None else None
    return EmbeddingBagConfig(
        name=name, feature_names=[feature], num_embeddings=rows, embedding_dim=stored_dim(width),
        # weighted lookups need SUM pooling; those bags are divided by their length afterwards
        pooling=PoolingType.MEAN if bag and not weighted else PoolingType.SUM,
        weight_init_min=-init_scale, weight_init_max=init_scale, **({"init_fn": init} if init else {}),
    )


def _kjt(keys, values, lengths, weights=None) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=keys, values=torch.cat(values), lengths=torch.cat(lengths),
        weights=torch.cat(weights) if weights is not None else None,
        stride=lengths[0].shape[0], length_per_key=[v.shape[0] for v in values],
    )


class MappedEmbeddings(nn.Module):
    """One table per field whose ids map to fewer rows ("hash" or "others", see the module docstring).

    Args:
        spec: the dataset's fields (every field kept).
        dim: X, the embedding dim of every field.
        mapping: "hash" or "others".
        size: "hash": buckets B per field; "others": field → n_full (ids >= n_full share row n_full).
        first_order: also hold each row's first-order weight (column X).
        init_scale: rows start uniform in ±init_scale (first-order column at 0).
        device: where the tables live ("meta" under DistributedModelParallel).
    """

    def __init__(self, spec: FeatureSpec, dim: int, mapping: str, size: int | dict[str, int], first_order: bool,
                 init_scale: float = 0.01, device=None):
        super().__init__()
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping {mapping!r} is not one of {MAPPINGS}")
        self.dim, self.mapping, self.first_order_in_column = dim, mapping, first_order
        self.bags = {f.name: f.kind == "bag" for f in spec.fields}
        # rows per field, and the mapped fields: a hash field with <= B ids and an others field
        # without low-frequency ids store every id
        self.rows, self.mapped = {}, {}
        for f in spec.fields:
            n = f.num_embeddings
            if mapping == "hash":
                self.rows[f.name], self.mapped[f.name] = min(n, size), n > size
            else:
                n_full = size[f.name]
                self.rows[f.name], self.mapped[f.name] = (n_full + 1, True) if n_full < n else (n, False)
        self.n_full = dict(size) if mapping == "others" else {}
        width = dim + int(first_order)
        configs = [_config(f"t_{n}", self.feature(n), r, width, self.bags[n], init_scale, dim if first_order else None, False)
                   for n, r in self.rows.items()]
        self.ebc = EmbeddingBagCollection(tables=configs, device=device)
        self.layout = StoredLayout(tuple(self.rows), (dim,) * len(self.rows), sum(r * width for r in self.rows.values()),
                                   sum(c.num_embeddings * c.embedding_dim * 4 for c in configs))

    def feature(self, name: str) -> str:
        return f"{name}{DERIVED_SEP}{self.mapping}" if self.mapped[name] else name

    def row_of(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        if not self.mapped[name]:
            return ids
        if self.mapping == "hash":
            return mix32(ids) % self.rows[name]
        return ids.clamp(max=self.n_full[name])

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        return self.lookup(sparse)[0]

    def lookup(self, sparse: KeyedJaggedTensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        fields = sparse.to_dict()
        names = list(self.rows)
        kjt = _kjt([self.feature(n) for n in names], [self.row_of(n, fields[n].values()) for n in names],
                   [fields[n].lengths() for n in names])
        pooled = self.ebc(kjt).to_dict()
        rows = [pooled[self.feature(n)] for n in names]
        embs = [r[:, : self.dim] for r in rows]
        return embs, torch.stack([r[:, self.dim] for r in rows], dim=1).sum(dim=1) if self.first_order_in_column else None


class TwoTierEmbeddings(nn.Module):
    """Frequent ids at dim X, low-frequency ids at dim x projected to X (see the module docstring).

    Args:
        spec: the dataset's fields (every field kept).
        dim: X.
        low_dim: x (< X).
        n_full: field → ids [0, n_full) are frequent; a field with n_full = its ids has one tier.
        first_order: also hold each row's first-order weight (column X of the frequent rows,
            column x of the low-frequency rows).
        init_scale: rows start uniform in ±init_scale (first-order column at 0).
        device: where the tables live.
    """

    def __init__(self, spec: FeatureSpec, dim: int, low_dim: int, n_full: dict[str, int], first_order: bool,
                 init_scale: float = 0.01, device=None):
        super().__init__()
        if not 0 < low_dim < dim:
            raise ValueError(f"low_dim must be in (0, {dim}), got {low_dim}")
        self.dim, self.low_dim, self.first_order_in_column = dim, low_dim, first_order
        self.bags = {f.name: f.kind == "bag" for f in spec.fields}
        self.n_full = {f.name: n_full[f.name] for f in spec.fields}
        self.n_low = {f.name: f.num_embeddings - self.n_full[f.name] for f in spec.fields}
        fo = int(first_order)
        configs, params = [], 0
        self.proj = nn.ModuleDict()
        for f in spec.fields:
            n = f.name
            two = self.n_low[n] > 0
            configs.append(_config(f"t_{n}", self.high(n), self.n_full[n], dim + fo, True, init_scale, dim if fo else None, True))
            params += self.n_full[n] * (dim + fo)
            if two:
                configs.append(_config(f"l_{n}", self.low(n), self.n_low[n], low_dim + fo, True, init_scale,
                                       low_dim if fo else None, True))
                self.proj[n] = nn.Linear(low_dim, dim, bias=False, device=device)
                params += self.n_low[n] * (low_dim + fo)
        self.ebc = EmbeddingBagCollection(tables=configs, is_weighted=True, device=device)
        self.layout = StoredLayout(tuple(self.n_full), (dim,) * len(self.n_full), params,
                                   sum(c.num_embeddings * c.embedding_dim * 4 for c in configs))

    def high(self, name: str) -> str:
        return f"{name}{DERIVED_SEP}high" if self.n_low[name] else name

    def low(self, name: str) -> str:
        return f"{name}{DERIVED_SEP}low"

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        return self.lookup(sparse)[0]

    def lookup(self, sparse: KeyedJaggedTensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        fields = sparse.to_dict()
        keys, values, lengths, weights = [], [], [], []
        for n, jt in fields.items():
            x = jt.values()
            if not self.n_low[n]:
                keys.append(n)
                values.append(x)
                lengths.append(jt.lengths())
                weights.append(torch.ones(x.shape, dtype=torch.float32, device=x.device))
                continue
            # every id is looked up in both tables, weighted 1 where it belongs and 0 elsewhere,
            # so each lookup keeps the shape of the field's ids (no data-dependent shapes)
            high = x < self.n_full[n]
            zero = torch.zeros_like(x)
            keys += [self.high(n), self.low(n)]
            values += [torch.where(high, x, zero), torch.where(high, zero, x - self.n_full[n])]
            lengths += [jt.lengths(), jt.lengths()]
            weights += [high.to(torch.float32), (~high).to(torch.float32)]
        pooled = self.ebc(_kjt(keys, values, lengths, weights)).to_dict()
        embs, first = [], []
        for n, jt in fields.items():
            hi = pooled[self.high(n)]
            e, w = hi[:, : self.dim], hi[:, self.dim] if self.first_order_in_column else None
            if self.n_low[n]:
                lo = pooled[self.low(n)]
                e = e + self.proj[n](lo[:, : self.low_dim])
                w = w + lo[:, self.low_dim] if w is not None else None
            if self.bags[n]:
                count = jt.lengths().clamp(min=1).to(e.dtype)
                e = e / count.unsqueeze(1)
                w = w / count if w is not None else None
            embs.append(e)
            first.append(w)
        return embs, torch.stack(first, dim=1).sum(dim=1) if self.first_order_in_column else None


class QREmbeddings(nn.Module):
    """Quotient-remainder compositional embeddings (see the module docstring).

    Args:
        spec: the dataset's fields (every field kept).
        dim: X, the embedding dim of every field.
        buckets: B, the remainder table's rows; fields with <= B ids keep one row per id.
        first_order: also hold each row's first-order weight (column X).
        init_scale: plain tables start uniform in ±init_scale, quotient and remainder tables
            in ±√init_scale (first-order columns at 0).
        device: where the tables live.
    """

    def __init__(self, spec: FeatureSpec, dim: int, buckets: int, first_order: bool, init_scale: float = 0.01, device=None):
        super().__init__()
        self.dim, self.buckets, self.first_order_in_column = dim, buckets, first_order
        self.bags = {f.name: f.kind == "bag" for f in spec.fields}
        self.mapped = {f.name: f.num_embeddings > buckets for f in spec.fields}
        width, fo = dim + int(first_order), dim if first_order else None
        configs = []
        for f in spec.fields:
            n = f.name
            if self.mapped[n]:
                scale = init_scale ** 0.5
                configs += [_config(f"q_{n}", self.quotient(n), -(-f.num_embeddings // buckets), width, self.bags[n], scale, fo, False),
                            _config(f"r_{n}", self.remainder(n), buckets, width, self.bags[n], scale, fo, False)]
            else:
                configs.append(_config(f"t_{n}", n, f.num_embeddings, width, self.bags[n], init_scale, fo, False))
        self.ebc = EmbeddingBagCollection(tables=configs, device=device)
        names = tuple(f.name for f in spec.fields)
        self.layout = StoredLayout(names, (dim,) * len(names), sum(c.num_embeddings * width for c in configs),
                                   sum(c.num_embeddings * c.embedding_dim * 4 for c in configs))

    def quotient(self, name: str) -> str:
        return f"{name}{DERIVED_SEP}qr_q"

    def remainder(self, name: str) -> str:
        return f"{name}{DERIVED_SEP}qr_r"

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        return self.lookup(sparse)[0]

    def lookup(self, sparse: KeyedJaggedTensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        fields = sparse.to_dict()
        keys, values, lengths = [], [], []
        for n, jt in fields.items():
            x = jt.values()
            if self.mapped[n]:
                keys += [self.quotient(n), self.remainder(n)]
                values += [torch.div(x, self.buckets, rounding_mode="floor"), torch.remainder(x, self.buckets)]
                lengths += [jt.lengths(), jt.lengths()]
            else:
                keys.append(n)
                values.append(x)
                lengths.append(jt.lengths())
        pooled = self.ebc(_kjt(keys, values, lengths)).to_dict()
        embs, first = [], []
        for n in fields:
            if not self.mapped[n]:
                row = pooled[n]
                embs.append(row[:, : self.dim])
                first.append(row[:, self.dim] if self.first_order_in_column else None)
                continue
            q, r = pooled[self.quotient(n)], pooled[self.remainder(n)]
            embs.append(q[:, : self.dim] + r[:, : self.dim] if self.bags[n] else q[:, : self.dim] * r[:, : self.dim])
            first.append(q[:, self.dim] + r[:, self.dim] if self.first_order_in_column else None)
        return embs, torch.stack(first, dim=1).sum(dim=1) if self.first_order_in_column else None
