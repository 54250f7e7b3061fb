"""Frequency-split embedding tables: frequent ids keep rows, rare ids are compressed.

SPEC §5 (AutoDPQ, seed 002) with DPQ-SX from Chen et al. 2020. Per field, ids whose
train count is below a threshold are *low-frequency*. The vocabulary orders ids by
descending train count (trainer/data/vocab.py), so the low-frequency ids of a field are
the contiguous suffix [n_full, num_embeddings); id 0 (OOV, the catch-all for unseen
tokens) always keeps a full row. A field's low-frequency ids are stored one of three ways
(`Compression.kind`):

  full    each id its own row (FE: no compression);
  others  all low-frequency ids share one extra row n_full (ids clamped);
  dpq     product-quantized with (K, D): the dim-X vector is split into D sub-spaces of
          X/D; each sub-space has K centroids; an id is stored as D codes.

Two module forms share the frequent-id tables (TorchRec tables ``t_<field>``):

* `CompressedEmbeddings` (training): a dpq field also holds raw rows for its
  low-frequency ids and a `DPQCodebook`; each raw row is quantized by DPQ-SX — softmax
  over the dot products with the K centroids of each sub-space at temperature τ_KD,
  straight-through: the forward value is exactly the chosen centroids (hard), the
  gradient flows through the softmax (soft) into the raw rows and the centroids.
* `ServedEmbeddings` (inference/export, built by `to_served`): the raw rows are gone;
  a dpq field keeps its codes (a uint8 [n_low, D] buffer when K <= 256) and its
  centroids as a TorchRec table ``c_<field>`` of D·K rows × X/D, looked up with one
  feature per sub-space (id = code + K·sub-space). Pooling is linear and commutes with
  concatenating sub-spaces, so sum/mean pooling of bags is exact.

All tables live in one weighted EmbeddingBagCollection whose input the module builds
from the field ids: features it computes itself are named ``<field>:<tag>`` (serving's
bundle treats them as *derived*: only the field is checked against the spec). Weights
(1 = this id uses this table, 0 = not) keep every lookup the shape of the field's ids,
so exported programs have no data-dependent shapes; all pooling is SUM and bags are
divided by their length afterwards (per-sample weights need SUM pooling).

Byte accounting (`FieldTable.embedding_bytes`) counts exactly what `ServedEmbeddings`
stores: rows × stored width × 4 for each table (FBGEMM needs widths % 4 == 0, see
tables.py), plus codes × their integer size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from serving.contract import DERIVED_SEP as DERIVED  # <field>:<tag> names a feature the model derives from the field's ids
from serving.features import FeatureSpec
from trainer.models.ctr import CTRModel, ModelConfig, build_model
from trainer.models.tables import FieldEmbeddings, stored_dim

KINDS = ("full", "others", "dpq")
TAU_KD = 1e-4


def code_dtype(k: int) -> torch.dtype:
    """Smallest integer type holding codes 0..k-1."""
    if k <= 256:
        return torch.uint8
    return torch.int16 if k <= 2**15 else torch.int32


@dataclass(frozen=True)
class Compression:
    """How a field stores its low-frequency ids.

    Args:
        kind: "full" | "others" | "dpq" (see the module docstring).
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

    @property
    def n_low(self) -> int:
        return self.num_embeddings - self.n_full

    @property
    def kind(self) -> str:
        return self.compression.kind

    @property
    def rows(self) -> int:
        """Rows of the field's table t_<field>."""
        return {"full": self.num_embeddings, "others": self.n_full + 1, "dpq": self.n_full}[self.kind]

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
        extra = self.n_low * c.d + c.k * self.dim if c.kind == "dpq" else 0
        return self.rows * self.dim + extra

    @property
    def embedding_bytes(self) -> int:
        """Bytes `ServedEmbeddings` stores for this field."""
        stored = self.rows * stored_dim(self.dim) * 4
        c = self.compression
        if c.kind == "dpq":
            codes = self.n_low * c.d * torch.empty(0, dtype=code_dtype(c.k)).element_size()
            stored += codes + c.d * c.k * stored_dim(self.dim // c.d) * 4
        return stored

    def to_json(self) -> dict:
        return {"n_full": self.n_full, "n_low": self.n_low, "dim": self.dim, **self.compression.to_json(),
                "embedding_bytes": self.embedding_bytes}


@dataclass(frozen=True)
class CompressedLayout:
    """The per-field plans of a model's embeddings (the `layout` a CTR model reads).

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

    def with_compression(self, choices: dict[str, Compression]) -> "CompressedLayout":
        """The same split with other compressions (fields not named keep theirs)."""
        return CompressedLayout(tuple(
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
) -> CompressedLayout:
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
    return CompressedLayout(tuple(tables))


class DPQCodebook(nn.Module):
    """DPQ-SX quantizer: K centroids in each of D sub-spaces of a dim-X vector.

    code_i(e) = argmax_k <e^(i), q_k^(i)>; the output is [q_{code_1}^(1); ...; q_{code_D}^(D)].
    Training: forward value = exactly that (hard); backward = the softmax relaxation
    softmax(<e^(i), q^(i)> / τ_KD) @ q^(i) (gradient into e and q). With τ_KD = 1e-4 the
    softmax is nearly one-hot, so e gets gradient only from near ties; q always gets the
    gradient of the centroids it outputs.

    Args:
        k: centroids per sub-space.
        d: sub-spaces.
        dim: X (divisible by d).
        tau: τ_KD.
    """

    def __init__(self, k: int, d: int, dim: int, tau: float = TAU_KD):
        super().__init__()
        if dim % d:
            raise ValueError(f"D={d} does not divide dim {dim}")
        self.k, self.d, self.dim, self.tau = k, d, dim, tau
        self.centroids = nn.Parameter(torch.zeros(d, k, dim // d))

    @torch.no_grad()
    def init_from(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        """Centroids = sub-vectors of K randomly drawn rows, independently per sub-space
        (with replacement when there are fewer than K rows)."""
        n = rows.shape[0]
        sub = rows.reshape(n, self.d, self.dim // self.d)
        for i in range(self.d):
            pick = torch.randperm(n, generator=generator)[: self.k] if n >= self.k else torch.randint(n, (self.k,), generator=generator)
            self.centroids[i].copy_(sub[pick, i])

    def logits(self, e: torch.Tensor) -> torch.Tensor:
        """<e^(i), q_k^(i)> as [n, D, K]."""
        return torch.einsum("ndx,dkx->ndk", e.reshape(-1, self.d, self.dim // self.d), self.centroids)

    @torch.no_grad()
    def codes(self, e: torch.Tensor) -> torch.Tensor:
        """[n, D] codes of rows e [n, X] (int64)."""
        return self.logits(e).argmax(dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """[n, X] concatenated centroids of codes [n, D]."""
        return self.centroids[torch.arange(self.d, device=codes.device), codes].reshape(-1, self.dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        scores = self.logits(e)
        hard = self.lookup(scores.argmax(dim=-1))
        soft = torch.softmax(scores / self.tau, dim=-1)
        # (soft - soft.detach()) is exactly 0, so the value is exactly `hard` (the inference
        # lookup), while the gradient is that of soft @ q: straight-through DPQ-SX.
        relax = torch.einsum("ndk,dkx->ndx", soft - soft.detach(), self.centroids).reshape(-1, self.dim)
        return hard + relax


def _row_index(lengths: torch.Tensor) -> torch.Tensor:
    """Row of each id of a jagged field: [0]*len_0 + [1]*len_1 + ..."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.long())


def pool_rows(rows: torch.Tensor, vec: torch.Tensor, batch: int) -> torch.Tensor:
    """[batch, X] with vec[j] summed into row rows[j]."""
    return torch.zeros(batch, vec.shape[1], dtype=vec.dtype, device=vec.device).index_add(0, rows, vec)


def _ebc(configs: list[EmbeddingBagConfig], device) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=configs, is_weighted=True, device=device)


def _table(name: str, features: list[str], rows: int, dim: int, init_scale: float) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=name, feature_names=features, num_embeddings=rows, embedding_dim=stored_dim(dim),
        pooling=PoolingType.SUM, weight_init_min=-init_scale, weight_init_max=init_scale,
    )


class _SplitEmbeddings(nn.Module):
    """What both forms share: the t_<field> tables and the per-field assembly."""

    def __init__(self, layout: CompressedLayout):
        super().__init__()
        self.layout = layout

    def lookup(self, sparse: KeyedJaggedTensor) -> tuple[list[torch.Tensor], None]:
        """As FieldEmbeddings.lookup; first-order weights stay in the model's own tables."""
        return self(sparse), None

    def _inputs(self, fields: dict) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """EBC input for the t_<field> tables: (keys, values, lengths, weights) per feature."""
        keys, values, lengths, weights = [], [], [], []
        for t in self.layout.tables:
            jt = fields[t.name]
            x = jt.values()
            ones = torch.ones(x.shape, dtype=torch.float32, device=x.device)
            if t.kind == "full":
                ids, w = x, ones
            elif t.kind == "others":
                ids, w = x.clamp(max=t.n_full), ones
            else:
                high = x < t.n_full
                ids, w = torch.where(high, x, torch.zeros_like(x)), high.to(torch.float32)
            keys.append(t.feature)
            values.append(ids)
            lengths.append(jt.lengths())
            weights.append(w)
        return keys, values, lengths, weights

    def _lookup(self, keys, values, lengths, weights) -> dict[str, torch.Tensor]:
        per_key = [v.shape[0] for v in values]  # known sizes: to_dict need not sum the lengths
        kjt = KeyedJaggedTensor(
            keys=keys, values=torch.cat(values), lengths=torch.cat(lengths), weights=torch.cat(weights),
            stride=lengths[0].shape[0], length_per_key=per_key,
        )
        return self.ebc(kjt).to_dict()

    @staticmethod
    def _finish(t: FieldTable, e: torch.Tensor, jt) -> torch.Tensor:
        if t.bag:
            e = e / jt.lengths().clamp(min=1).unsqueeze(1).to(e.dtype)
        return e


class CompressedEmbeddings(_SplitEmbeddings):
    """Training form (see module docstring): pooled per-field embeddings [B, X_f].

    Args:
        layout: the per-field plans.
        init_scale: tables and raw rows start uniform in ±init_scale (until `init_from_full`).
        tau_kd: DPQ-SX softmax temperature τ_KD.
        device: where the tables live.
    """

    def __init__(self, layout: CompressedLayout, init_scale: float = 0.01, tau_kd: float = TAU_KD, device=None):
        super().__init__(layout)
        self.ebc = _ebc([_table(f"t_{t.name}", [t.feature], t.rows, t.dim, init_scale) for t in layout.tables], device)
        self.raw = nn.ModuleDict()
        self.codebooks = nn.ModuleDict()
        for t in layout.tables:
            if t.kind == "dpq":
                self.raw[t.name] = nn.Embedding(t.n_low, t.dim, device=device)
                nn.init.uniform_(self.raw[t.name].weight, -init_scale, init_scale)
                self.codebooks[t.name] = DPQCodebook(t.compression.k, t.compression.d, t.dim, tau_kd).to(device)

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        fields = sparse.to_dict()
        pooled = self._lookup(*self._inputs(fields))
        out = []
        for t in self.layout.tables:
            jt = fields[t.name]
            e = pooled[t.feature][:, : t.dim]
            if t.kind == "dpq":
                e = e + self.low_pooled(t, jt, self.codebooks[t.name])
            out.append(self._finish(t, e, jt))
        return out

    def low_pooled(self, t: FieldTable, jt, quantize) -> torch.Tensor:
        """[B, X] sum over each row's low-frequency ids of quantize(raw row)."""
        rows, raw = self.low_rows(t, jt)
        return pool_rows(rows, quantize(raw), jt.lengths().numel())

    def low_rows(self, t: FieldTable, jt) -> tuple[torch.Tensor, torch.Tensor]:
        """(row of each low-frequency id in the batch, its raw embedding [m, X])."""
        x = jt.values()
        low = torch.nonzero(x >= t.n_full).squeeze(1)
        return _row_index(jt.lengths())[low], self.raw[t.name](x[low] - t.n_full)

    @torch.no_grad()
    def init_from_full(self, full: FieldEmbeddings, seed: int) -> None:
        """Start from an uncompressed model's tables (AutoDPQ's pretrain step): frequent
        rows copied, raw rows of dpq fields = the pretrained rows, centroids drawn from
        them, the shared row of an "others" field = the mean of its low-frequency rows."""
        for t in self.layout.tables:
            src = full.ebc.embedding_bags[f"t_{t.name}"].weight
            dst = self.ebc.embedding_bags[f"t_{t.name}"].weight
            if src.shape[0] != t.num_embeddings or src.shape[1] != dst.shape[1]:
                raise ValueError(f"field {t.name!r}: pretrained table {tuple(src.shape)} does not match the layout")
            dst[: t.n_full].copy_(src[: t.n_full])
            if t.kind == "full":
                dst.copy_(src)
            elif t.kind == "others":
                dst[t.n_full].copy_(src[t.n_full :].mean(0))
            else:
                self.raw[t.name].weight.copy_(src[t.n_full :, : t.dim])
        self.init_codebooks(seed)

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        """Draw every dpq field's centroids from its current raw rows."""
        gen = torch.Generator().manual_seed(seed)
        for name, book in self.codebooks.items():
            book.init_from(self.raw[name].weight, gen)


class ServedEmbeddings(_SplitEmbeddings):
    """Inference form: frequent rows + (dpq) codes buffer and centroid tables; no raw rows.

    Args:
        layout: the per-field plans.
        device: where the tables live.
    """

    def __init__(self, layout: CompressedLayout, device=None):
        super().__init__(layout)
        configs = [_table(f"t_{t.name}", [t.feature], t.rows, t.dim, 0.0) for t in layout.tables]
        for t in layout.tables:
            c = t.compression
            if c.kind == "dpq":
                configs.append(_table(f"c_{t.name}", t.sub_features(), c.d * c.k, t.dim // c.d, 0.0))
                self.register_buffer(f"codes_{t.name}", torch.zeros(t.n_low, c.d, dtype=code_dtype(c.k), device=device))
        self.ebc = _ebc(configs, device)

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        fields = sparse.to_dict()
        keys, values, lengths, weights = self._inputs(fields)
        for t in self.layout.tables:
            if t.kind != "dpq":
                continue
            jt = fields[t.name]
            x = jt.values()
            low = x >= t.n_full
            slot = torch.where(low, x - t.n_full, torch.zeros_like(x))
            k = t.compression.k
            codes = getattr(self, f"codes_{t.name}")[slot].long()  # [nnz, D]
            w = low.to(torch.float32)
            for i, name in enumerate(t.sub_features()):
                keys.append(name)
                values.append(codes[:, i] + k * i)
                lengths.append(jt.lengths())
                weights.append(w)
        pooled = self._lookup(keys, values, lengths, weights)
        out = []
        for t in self.layout.tables:
            e = pooled[t.feature][:, : t.dim]
            if t.kind == "dpq":
                width = t.dim // t.compression.d
                e = e + torch.cat([pooled[s][:, :width] for s in t.sub_features()], dim=1)
            out.append(self._finish(t, e, fields[t.name]))
        return out

    def stored_bytes(self) -> int:
        """Bytes of every tensor the module holds (tables + codes)."""
        return sum(v.numel() * v.element_size() for v in self.state_dict().values())


@torch.no_grad()
def to_served(emb: CompressedEmbeddings) -> ServedEmbeddings:
    """Drop the raw rows: codes = argmax of each raw row against its centroids; the
    centroids go into the c_<field> tables (row code + K·i of sub-space i)."""
    served = ServedEmbeddings(emb.layout)
    for t in emb.layout.tables:
        served.ebc.embedding_bags[f"t_{t.name}"].weight.copy_(emb.ebc.embedding_bags[f"t_{t.name}"].weight)
        if t.kind != "dpq":
            continue
        book = emb.codebooks[t.name]
        getattr(served, f"codes_{t.name}").copy_(book.codes(emb.raw[t.name].weight).to(code_dtype(book.k)))
        table = served.ebc.embedding_bags[f"c_{t.name}"].weight
        table.zero_()
        table[:, : t.dim // book.d].copy_(book.centroids.reshape(book.d * book.k, t.dim // book.d))
    return served.eval()


def require_separate_first_order(cfg: ModelConfig) -> None:
    if cfg.first_order_column:
        raise ValueError("model.first_order_column must be false with DPQ compression: "
                         "compressed tables have no column for the first-order weights")


def compressed_model(spec: FeatureSpec, cfg: ModelConfig, layout: CompressedLayout, tau_kd: float = TAU_KD, device=None) -> CTRModel:
    """The configured CTR model (trainer.models.ctr) with `CompressedEmbeddings` in place of
    its plain tables; the head is unchanged (it only sees per-field [B, X_f] tensors)."""
    require_separate_first_order(cfg)
    dims = {n: 0 for n in spec.names} | {t.name: t.dim for t in layout.tables}
    model = build_model(spec, cfg, dims=dims, device=device)
    model.embeddings = CompressedEmbeddings(layout, cfg.init_scale, tau_kd, device)
    return model


def served_model(model: CTRModel) -> CTRModel:
    """A copy of a trained compressed CTR model in its inference form (what is exported)."""
    served = copy.deepcopy(model).cpu()
    served.embeddings = to_served(served.embeddings)
    return served.eval()
