"""DPQ-SX embedding modules over a frequency-split plan (trainer.models.layout).

DPQ-SX from Chen et al. 2020, as AutoDPQ uses it. Two module forms share the frequent-id
tables (TorchRec tables ``t_<field>``):

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

An int8 / int4 field (trainer.models.rowwise) also trains raw rows, read through their
integer form; served, it keeps a uint8 buffer of packed rows and an fp16 [n_low, 2] buffer
of scales and biases, gathered per id and pooled by index_add.

All tables live in one weighted EmbeddingBagCollection whose input the module builds
from the field ids: features it computes itself are named ``<field>:<tag>`` (serving's
bundle treats them as *derived*: only the field is checked against the spec). Weights
(1 = this id uses this table, 0 = not) keep every lookup the shape of the field's ids,
so exported programs have no data-dependent shapes; all pooling is SUM and bags are
divided by their length afterwards (per-sample weights need SUM pooling).

Byte accounting (`FieldTable.embedding_bytes`) counts exactly what `ServedEmbeddings`
stores: rows × stored width × 4 for each table (FBGEMM needs widths % 4 == 0, see
layout.py), plus codes × their integer size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from trainer.models.ctr import CTRModel, ModelConfig
from trainer.models.layout import CODED, EmbeddingLayout, FieldTable, code_dtype, stored_dim
from trainer.models.rowwise import ROW_BITS, fake_quantize, pack, unpack
from trainer.models.tables import FieldEmbeddings

TAU_KD = 1e-4


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


def _row_index(lengths: torch.Tensor, nnz: int) -> torch.Tensor:
    """Row of each of the nnz ids of a jagged field: [0]*len_0 + [1]*len_1 + ... (the known
    size keeps exported programs free of data-dependent shapes)."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.long(), output_size=nnz)


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

    first_order_in_column = False  # first-order weights stay in the model's own tables

    def __init__(self, layout: EmbeddingLayout):
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
        sparse: raw rows with sparse gradients (ModelConfig.raw_rows = "sparse").
    """

    def __init__(self, layout: EmbeddingLayout, init_scale: float = 0.01, tau_kd: float = TAU_KD, device=None,
                 sparse: bool = False):
        super().__init__(layout)
        self.ebc = _ebc([_table(f"t_{t.name}", [t.feature], t.rows, t.dim, init_scale) for t in layout.tables], device)
        self.raw = nn.ModuleDict()
        self.codebooks = nn.ModuleDict()
        for t in layout.tables:
            if t.kind in CODED:
                self.raw[t.name] = nn.Embedding(t.n_low, t.dim, device=device, sparse=sparse)
                nn.init.uniform_(self.raw[t.name].weight, -init_scale, init_scale)
            if t.kind == "dpq":
                self.codebooks[t.name] = DPQCodebook(t.compression.k, t.compression.d, t.dim, tau_kd).to(device)

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        fields = sparse.to_dict()
        pooled = self._lookup(*self._inputs(fields))
        return [self._field(t, pooled[t.feature][:, : t.dim], fields[t.name]) for t in self.layout.tables]

    def _field(self, t: FieldTable, e: torch.Tensor, jt) -> torch.Tensor:
        """Field t's embedding [B, X] from its pooled frequent rows `e` and its ids `jt`."""
        if t.kind == "dpq":
            e = e + self.low_pooled(t, jt, self.codebooks[t.name])
        elif t.kind in ROW_BITS:
            e = e + self.low_pooled(t, jt, lambda raw: fake_quantize(raw, t.kind))
        return self._finish(t, e, jt)

    def low_pooled(self, t: FieldTable, jt, quantize) -> torch.Tensor:
        """[B, X] sum over each row's low-frequency ids of quantize(raw row)."""
        rows, raw = self.low_rows(t, jt)
        return pool_rows(rows, quantize(raw), jt.lengths().numel())

    def low_rows(self, t: FieldTable, jt) -> tuple[torch.Tensor, torch.Tensor]:
        """(row of each low-frequency id in the batch, its raw embedding [m, X])."""
        x = jt.values()
        low = torch.nonzero(x >= t.n_full).squeeze(1)
        return _row_index(jt.lengths(), x.shape[0])[low], self.raw[t.name](x[low] - t.n_full)

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
            else:  # a coded kind: its raw rows
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

    def __init__(self, layout: EmbeddingLayout, device=None):
        super().__init__(layout)
        configs = [_table(f"t_{t.name}", [t.feature], t.rows, t.dim, 0.0) for t in layout.tables]
        for t in layout.tables:
            c = t.compression
            if c.kind == "dpq":
                configs.append(_table(f"c_{t.name}", t.sub_features(), c.d * c.k, t.dim // c.d, 0.0))
                self.register_buffer(f"codes_{t.name}", torch.zeros(t.n_low, c.d, dtype=code_dtype(c.k), device=device))
            elif c.kind in ROW_BITS:
                self.register_buffer(f"rows_{t.name}", torch.zeros(t.n_low, t.dim * ROW_BITS[c.kind] // 8, dtype=torch.uint8,
                                                                   device=device))
                self.register_buffer(f"qparams_{t.name}", torch.zeros(t.n_low, 2, dtype=torch.float16, device=device))
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
            elif t.kind in ROW_BITS:
                e = e + self._int_rows(t, fields[t.name])
            out.append(self._finish(t, e, fields[t.name]))
        return out

    def _int_rows(self, t: FieldTable, jt) -> torch.Tensor:
        """[B, X] sum over each row's low-frequency ids of their stored integer rows (every id
        is read, the frequent ones at slot 0 and masked: no data-dependent shapes)."""
        x = jt.values()
        low = x >= t.n_full
        slot = torch.where(low, x - t.n_full, torch.zeros_like(x))
        rows = unpack(getattr(self, f"rows_{t.name}")[slot], getattr(self, f"qparams_{t.name}")[slot], t.kind)
        return pool_rows(_row_index(jt.lengths(), x.shape[0]), rows * low.unsqueeze(1).to(rows.dtype), jt.lengths().numel())

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
        if t.kind in ROW_BITS:
            q, qparams = pack(emb.raw[t.name].weight, t.kind)
            getattr(served, f"rows_{t.name}").copy_(q)
            getattr(served, f"qparams_{t.name}").copy_(qparams)
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


def served_model(model: CTRModel) -> CTRModel:
    """A copy of a trained compressed CTR model in its inference form (what is exported)."""
    served = copy.deepcopy(model).cpu()
    served.embeddings = to_served(served.embeddings)
    return served.eval()
