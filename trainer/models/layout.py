"""The storage plan of a model's embeddings: per kept field its dim, rows and compression.

Every embeddings module (plain mixed-dim tables, DPQ training form, DPQ served form)
exposes one `EmbeddingLayout`; models read fields and dims from it, reports read
parameters and bytes. The plan is built from a cluster's decisions (`from_cluster`) or
from plain dims (`layout_for`).

Per field, ids whose train count is below a threshold are *low-frequency*. The
vocabulary orders ids by descending train count (trainer/data/vocab.py), so they are the
contiguous suffix [n_full, num_embeddings); id 0 (OOV) always keeps a full row. A
field's low-frequency ids are stored one of three ways (`Compression.kind`):

  full    each id its own row (no compression; n_full = num_embeddings);
  others  all low-frequency ids share one extra row n_full (ids clamped);
  dpq     product-quantized with (K, D): the dim-X vector is split into D sub-spaces of
          X/D; each sub-space has K centroids; an id is stored as D codes.
  int8 / int4  each id its own row of 8- / 4-bit integers with an fp16 scale and bias
          (trainer.models.rowwise).

FBGEMM's fused TBE kernels need every table's column count to be a multiple of 4, so a
table is stored with its dim rounded up to a multiple of 4; `embedding_params` counts
logical parameters, `embedding_bytes` what is stored (tables + codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from serving.contract import DERIVED_SEP as DERIVED  # <field>:<tag> names a feature the model derives from the field's ids
from serving.features import FeatureSpec
from trainer.decisions import ClusterDecision
from trainer.models.rowwise import ROW_BITS, row_bytes

KINDS = ("full", "others", "dpq", *ROW_BITS)
CODED = ("dpq", *ROW_BITS)  # kinds that keep raw rows while training and store each low-frequency id
FUSED_DIM_ALIGN = 4


def stored_dim(dim: int) -> int:
    return -(-dim // FUSED_DIM_ALIGN) * FUSED_DIM_ALIGN




def code_dtype(k: int) -> torch.dtype:
    """Smallest integer type holding codes 0..k-1."""
    if k <= 256:
        return torch.uint8
    return torch.int16 if k <= 2**15 else torch.int32


@dataclass(frozen=True)
class Compression:
    """How a field stores its low-frequency ids.

    Args:
        kind: "full" | "others" | "dpq" | "int8" | "int4" (see the module docstring).
        k: dpq: centroids per sub-space.
        d: dpq: sub-spaces (must divide the field's dim).
    """

    kind: str = "full"
    k: int = 0
    d: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"compression kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "dpq" and (self.k < 1 or self.d < 1):
            raise ValueError(f"dpq needs k >= 1 and d >= 1, got k={self.k}, d={self.d}")

    def to_json(self) -> dict:
        return {"kind": self.kind, "k": self.k, "d": self.d} if self.kind == "dpq" else {"kind": self.kind}

    @classmethod
    def from_json(cls, d: dict) -> "Compression":
        return cls(d["kind"], int(d.get("k", 0)), int(d.get("d", 0)))


FULL = Compression()
OTHERS = Compression("others")


def dpq(k: int, d: int) -> Compression:
    return Compression("dpq", k, d)


@dataclass(frozen=True)
class FieldTable:
    """Storage plan of one field.

    Args:
        name: the field.
        bag: mean-pooled bag field (else one id per row, sum = the row).
        num_embeddings: the field's ids (spec).
        n_full: ids [0, n_full) keep full rows; [n_full, num_embeddings) are low-frequency.
        dim: logical embedding dim X.
        compression: how the low-frequency ids are stored.
    """

    name: str
    bag: bool
    num_embeddings: int
    n_full: int
    dim: int
    compression: Compression = FULL

    def __post_init__(self) -> None:
        c = self.compression
        if not 1 <= self.n_full <= self.num_embeddings:
            raise ValueError(f"field {self.name!r}: n_full {self.n_full} outside [1, {self.num_embeddings}]")
        if c.kind != "full" and self.n_low == 0:
            raise ValueError(f"field {self.name!r}: no low-frequency ids to compress with {c.kind!r}")
        if c.kind == "dpq" and self.dim % c.d:
            raise ValueError(f"field {self.name!r}: D={c.d} does not divide dim {self.dim}")
        if c.kind in ROW_BITS and self.dim * ROW_BITS[c.kind] % 8:
            raise ValueError(f"field {self.name!r}: {c.kind} rows need dim * bits % 8 == 0, got dim {self.dim}")

    @property
    def n_low(self) -> int:
        return self.num_embeddings - self.n_full

    @property
    def kind(self) -> str:
        return self.compression.kind

    @property
    def rows(self) -> int:
        """Rows of the field's table t_<field>."""
        return {"full": self.num_embeddings, "others": self.n_full + 1}.get(self.kind, self.n_full)

    @property
    def feature(self) -> str:
        """The EBC feature feeding t_<field> (derived when ids are masked or clamped)."""
        return self.name if self.kind == "full" else f"{self.name}{DERIVED}{self.kind}"

    def sub_features(self) -> list[str]:
        return [f"{self.name}{DERIVED}dpq{i}" for i in range(self.compression.d)]

    @property
    def embedding_params(self) -> int:
        """Logical parameters at inference (codes count one each)."""
        c = self.compression
        extra = self.n_low * c.d + c.k * self.dim if c.kind == "dpq" else self.n_low * self.dim if c.kind in ROW_BITS else 0
        return self.rows * self.dim + extra

    @property
    def embedding_bytes(self) -> int:
        """Bytes `ServedEmbeddings` stores for this field."""
        stored = self.rows * stored_dim(self.dim) * 4
        c = self.compression
        if c.kind == "dpq":
            codes = self.n_low * c.d * torch.empty(0, dtype=code_dtype(c.k)).element_size()
            stored += codes + c.d * c.k * stored_dim(self.dim // c.d) * 4
        elif c.kind in ROW_BITS:
            stored += self.n_low * row_bytes(c.kind, self.dim)
        return stored

    def to_json(self) -> dict:
        return {"n_full": self.n_full, "n_low": self.n_low, "dim": self.dim, **self.compression.to_json(),
                "embedding_bytes": self.embedding_bytes}


@dataclass(frozen=True)
class EmbeddingLayout:
    """The per-field plans of a model's embeddings (the `layout` every embeddings module exposes).

    Args:
        tables: one FieldTable per kept field, in model order.
    """

    tables: tuple[FieldTable, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tables)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(t.dim for t in self.tables)

    @property
    def embedding_params(self) -> int:
        return sum(t.embedding_params for t in self.tables)

    @property
    def embedding_bytes(self) -> int:
        return sum(t.embedding_bytes for t in self.tables)

    def table(self, name: str) -> FieldTable:
        return next(t for t in self.tables if t.name == name)

    def with_compression(self, choices: dict[str, Compression]) -> "EmbeddingLayout":
        """The same split with other compressions (fields not named keep theirs)."""
        return EmbeddingLayout(tuple(
            FieldTable(t.name, t.bag, t.num_embeddings, t.n_full, t.dim, choices.get(t.name, t.compression)) for t in self.tables
        ))

    def to_json(self) -> dict:
        return {t.name: t.to_json() for t in self.tables}


def n_full_ids(counts: np.ndarray, threshold: int, field: str = "?") -> int:
    """1 (the OOV id) + the ids >= 1 with train count >= threshold.

    Raises ValueError unless ids >= 1 are in descending count order (the vocabulary's
    order; pre-coded synthetic ids with min_count = 1 are not: use min_count >= 2).
    """
    c = np.asarray(counts[1:])
    if len(c) > 1 and (np.diff(c) > 0).any():
        raise ValueError(
            f"field {field!r}: ids are not in descending train-count order, so its low-frequency ids are not a "
            "suffix (pre-coded sources keep raw ids with data.min_count = 1; set data.min_count >= 2)"
        )
    return 1 + int((c >= threshold).sum())


def plan_layout(
    spec: FeatureSpec,
    counts: dict[str, np.ndarray],
    dims: dict[str, int],
    threshold: int,
    choices: dict[str, Compression] | None = None,
) -> EmbeddingLayout:
    """The frequency split of every kept field; `choices` name compressions (default full).

    Args:
        spec: the dataset's fields.
        counts: field → train count per id (CachedDataset.id_counts).
        dims: logical dim per field (0 = dropped).
        threshold: ids with train count < threshold are low-frequency (id 0 excepted).
        choices: field → compression; fields without low-frequency ids must stay "full".
    """
    choices = choices or {}
    tables = []
    for f in spec.fields:
        if dims.get(f.name, 0) <= 0:
            continue
        n_full = n_full_ids(counts[f.name], threshold, f.name)
        tables.append(FieldTable(f.name, f.kind == "bag", f.num_embeddings, n_full, dims[f.name], choices.get(f.name, FULL)))
    return EmbeddingLayout(tuple(tables))


def layout_for(spec: FeatureSpec, dims: dict[str, int]) -> EmbeddingLayout:
    """Plain tables: every kept field (dim > 0) stores all its ids."""
    return EmbeddingLayout(tuple(
        FieldTable(f.name, f.kind == "bag", f.num_embeddings, f.num_embeddings, dims[f.name])
        for f in spec.fields if dims.get(f.name, 0) > 0
    ))


def from_cluster(spec: FeatureSpec, cluster: ClusterDecision) -> EmbeddingLayout:
    """The layout one cluster's decisions describe (fields in spec order, dropped fields out)."""
    tables = []
    for f in spec.fields:
        fd = cluster.fields[f.name]
        if fd.dim == 0:
            continue
        s = fd.storage
        n_full = f.num_embeddings if s.kind == "full" else s.n_full
        tables.append(FieldTable(f.name, f.kind == "bag", f.num_embeddings, n_full, fd.dim, Compression(s.kind, s.k, s.d)))
    return EmbeddingLayout(tuple(tables))
