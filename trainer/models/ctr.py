"""The base CTR models over mixed-dim pooled embeddings: FM, Wide&Deep, DeepFM, IPNN, DCN, DLRM.

Every model maps (dense [B, n_numerical], sparse KJT) → logits [B]. Numerical fields
always reach the model as embeddings of their tokens (log or quantile buckets; for a "raw"
field only missing / present); `dense_input` additionally feeds their dense values
(log-scaled, or standardised for "raw") to the MLP (DLRM always uses them for its bottom
MLP), so a model with a "raw" field must read the dense input. A model given a
`numerical` module (trainer.models.autodis: AutoDis or raw scalar) embeds those fields from
their dense value instead of a table; they then have no table and no first-order weight.
Interactions that need equal dims (FM, IPNN, DLRM dot products) zero-pad shorter
embeddings to the widest kept dim (`blocks.stack_zero_padded`); the MLP and the cross
network consume the plain concatenation, which needs no padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from serving.features import FeatureSpec
from trainer.models.blocks import CrossNetwork, fm_interaction, mlp, pairwise_inner, stack_zero_padded, tuple_index
from trainer.models.tables import LinearWeights

RAW_ROWS = ("dense", "sparse")
FIRST_ORDER_LOW = ("own", "shared")


@dataclass
class ModelConfig:
    """Which CTR model and its sizes.

    Args:
        name: one of MODELS ("fm", "wide_deep", "deepfm", "ipnn", "dcn", "dlrm", "mlp").
        embedding_dim: default dim of every field.
        dims: per-field dim overrides; 0 drops a field.
        mlp: hidden sizes of the deep part.
        dropout: dropout after each hidden layer.
        cross_layers: DCN cross layers.
        dense_input: also feed the numerical fields' dense values to the MLP (required
            when a field is encoded "raw").
        init_scale: embedding tables start uniform in ±init_scale.
        first_order_column: keep FM / Wide&Deep / DeepFM first-order weights as an extra
            column of each field's table instead of separate tables (one lookup per id;
            see trainer.models.tables).
        raw_rows: how the raw rows of DPQ-coded (low-frequency) ids train: "dense" (one
            nn.Embedding under the dense Adam: every row that was ever touched keeps moving
            with Adam's momentum, and each step costs all rows) or "sparse" (sparse
            gradients under lazy Adam, torch.optim.SparseAdam: a step reads and moves only
            the batch's rows, what millions of coded ids need; weight_decay does not apply).
        first_order_low: first-order weights (own tables) of the low-frequency ids of a
            compressed field: "own" (each id its weight, stored for every id) or "shared"
            (one weight per field, as "others" shares a row; trainer.models.tables.LinearWeights).
    """

    name: str = "deepfm"
    embedding_dim: int = 16
    dims: dict[str, int] = field(default_factory=dict)
    mlp: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = 0.0
    cross_layers: int = 3
    dense_input: bool = False
    init_scale: float = 0.01
    first_order_column: bool = False
    raw_rows: str = "dense"
    first_order_low: str = "own"

    def validate(self) -> list[str]:
        problems = []
        if self.name not in MODELS:
            problems.append(f"model.name: {self.name!r} is not one of {sorted(MODELS)}")
        if self.embedding_dim <= 0:
            problems.append(f"model.embedding_dim: must be > 0, got {self.embedding_dim}")
        problems += [f"model.dims.{k}: must be >= 0, got {v}" for k, v in self.dims.items() if v < 0]
        problems += [f"model.mlp: sizes must be > 0, got {self.mlp}"] if any(h <= 0 for h in self.mlp) else []
        if self.first_order_low not in FIRST_ORDER_LOW:
            problems.append(f"model.first_order_low: {self.first_order_low!r} is not one of {list(FIRST_ORDER_LOW)}")
        if self.raw_rows not in RAW_ROWS:
            problems.append(f"model.raw_rows: {self.raw_rows!r} is not one of {list(RAW_ROWS)}")
        if not 0 <= self.dropout < 1:
            problems.append(f"model.dropout: must be in [0, 1), got {self.dropout}")
        return problems

    @property
    def reads_dense(self) -> bool:
        """Whether the model feeds the dense input (DLRM always does)."""
        return self.dense_input or self.name == "dlrm"

    def field_dims(self, spec: FeatureSpec) -> dict[str, int]:
        unknown = sorted(set(self.dims) - set(spec.names))
        if unknown:
            raise ValueError(f"model.dims names unknown fields {unknown}; fields are {spec.names}")
        return {n: self.dims.get(n, self.embedding_dim) for n in spec.names}


class CTRModel(nn.Module):
    """Shared embedding front end; subclasses define `head`.

    Args:
        spec: the dataset's fields.
        cfg: model config.
        embeddings: any module with a `layout` (trainer.models.layout.EmbeddingLayout),
            `lookup(sparse) -> (per-field embeddings, first-order sum or None)` and
            `first_order_in_column` (it also serves the first-order weights).
        device: "meta" when DistributedModelParallel will materialise the tables.
        interactions: the kept field interactions (tuples of names; pairs, and for orders
            above 2 the product of p embeddings summed over dims) of a model with pairwise
            interactions (`prunes_pairs`); None = every pair. Tuples with a dropped field
            are dropped.
        numerical: embeds numerical fields from the dense input (`names`, `dims`,
            forward(dense) → per-field embeddings); their embeddings follow the tables'.
    """

    uses_linear = False
    prunes_pairs = False  # its head sums or concatenates <e_i, e_j> over field pairs (and higher orders)

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig, embeddings: nn.Module, device=None,
                 interactions: list[tuple[str, ...]] | None = None, numerical: nn.Module | None = None):
        super().__init__()
        in_column = self.uses_linear and embeddings.first_order_in_column
        self.embeddings = embeddings
        self.numerical = numerical
        layout = self.embeddings.layout
        fields = list(layout.fields) + (numerical.names if numerical is not None else [])
        dims = list(layout.dims) + (numerical.dims if numerical is not None else [])
        if not fields:
            raise ValueError("every field has dim 0: the model would have no input")
        self.concat_dim = sum(dims)
        self.max_dim = max(dims)
        self.n_fields = len(fields)
        self.n_dense = len(spec.numerical) if cfg.dense_input else 0
        # an "autodis" field's missing value is NaN in the dense input; the MLP must not see it
        self.dense_has_nan = self.n_dense > 0 and any(f.encoding.name == "autodis" for f in spec.fields)
        raw = [f.name for f in spec.fields if f.encoding.name == "raw"]
        if raw and not cfg.dense_input:
            raise ValueError(f"fields {raw} are encoded 'raw': their values reach a model only as dense input; "
                             "set model.dense_input = true")
        embedded = set(numerical.names) if numerical is not None else set()
        linear_fields = tuple(n for n in spec.names if n not in embedded)
        own_tables = self.uses_linear and not in_column
        # only a frequency-split layout (EmbeddingLayout, not the frontier's StoredLayout) has low-frequency ids to share
        shared = ({t.name: t.n_full for t in getattr(layout, "tables", ()) if t.kind != "full"}
                  if own_tables and cfg.first_order_low == "shared" else {})
        self.linear = LinearWeights(spec, linear_fields, device, shared) if own_tables else None
        self.first_order_params = sum(shared[n] + 1 if n in shared else spec.field(n).num_embeddings
                                      for n in linear_fields) if self.uses_linear else 0
        self.bias = nn.Parameter(torch.zeros(1))
        index, self.high_orders = None, ()
        if interactions is not None:
            if not self.prunes_pairs:
                raise ValueError(f"model {cfg.name!r} has no pairwise interactions to keep or drop")
            pos = {f: i for i, f in enumerate(fields)}
            by_order: dict[int, set] = {}
            for t in interactions:
                if all(f in pos for f in t) and len(set(t)) == len(t) >= 2:
                    by_order.setdefault(len(t), set()).add(tuple(sorted(pos[f] for f in t)))
            index = tuple_index(sorted(by_order.get(2, ())), 2)
            self.high_orders = tuple(sorted(p for p in by_order if p > 2))
            for p in self.high_orders:
                self.register_buffer(f"order{p}_index", tuple_index(sorted(by_order[p]), p), persistent=False)
        # not persistent: the kept interactions are architecture (from the decisions), not trained weights
        self.register_buffer("pair_index", index, persistent=False)
        self.field_names = fields
        self.pair_weight: nn.Parameter | None = None
        self.n_higher = sum(getattr(self, f"order{p}_index").shape[1] for p in self.high_orders)

    def weight_pairs(self, weights: dict[frozenset, float]) -> None:
        """A learned weight on each kept pair, started from `weights` (keyed by the pair's
        two field names): AutoFIS's retrain keeps the search's α as attention units."""
        if self.pair_index is None:
            raise ValueError("pair weights need the kept interactions")
        names = [frozenset((self.field_names[i], self.field_names[j])) for i, j in self.pair_index.T.tolist()]
        missing = [sorted(n) for n in names if n not in weights]
        if missing:
            raise ValueError(f"no weight for kept pairs {missing}")
        self._pair_init = [float(weights[n]) for n in names]
        self.pair_weight = nn.Parameter(torch.tensor(self._pair_init, dtype=torch.float32, device=self.bias.device))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """This module's own parameters at their start values. A model built on the meta
        device (sharded storage) is materialized by DMP with `to_empty` followed by each
        module's `reset_parameters`; without this the bias and the pair weights would
        start from whatever memory held."""
        self.bias.zero_()
        if self.pair_weight is not None:
            self.pair_weight.copy_(torch.tensor(self._pair_init, dtype=self.pair_weight.dtype))

    @property
    def value_embedding_params(self) -> int:
        """Embedding parameters of the fields embedded from their value (0 without any)."""
        return self.numerical.embedding_params if self.numerical is not None else 0

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        embs, first_order = self.embeddings.lookup(sparse)
        if self.numerical is not None:
            embs = list(embs) + self.numerical(dense)
        if self.dense_has_nan:
            dense = torch.nan_to_num(dense, nan=0.0)
        return self.score(dense, sparse, embs, first_order)

    def score(self, dense: torch.Tensor, sparse: KeyedJaggedTensor, embs: list[torch.Tensor],
              first_order: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from given per-field embeddings (a search method may mask them first).

        `first_order`: the first-order sum if the caller already has it (from
        `embeddings.lookup`); otherwise it is looked up here when the model has one.
        """
        logit = self.head(dense, embs) + self.bias
        if first_order is None and self.uses_linear:
            first_order = self.linear(sparse) if self.linear is not None else self.embeddings.lookup(sparse)[1]
        return logit if first_order is None else logit + first_order

    def higher_order(self, stacked: torch.Tensor) -> torch.Tensor:
        """Σ_d Π_s e_s[d] of every kept interaction above order 2, [B, n_higher]."""
        parts = []
        for p in self.high_orders:
            index = getattr(self, f"order{p}_index")
            product = stacked[:, index[0]]
            for s in range(1, p):
                product = product * stacked[:, index[s]]
            parts.append(product.sum(dim=2))
        return torch.cat(parts, dim=1)

    def interaction_sum(self, embs: list[torch.Tensor]) -> torch.Tensor:
        """The FM term: every kept interaction's value, summed, [B]."""
        stacked = stack_zero_padded(embs, self.max_dim)
        total = fm_interaction(stacked, self.pair_index, self.pair_weight)
        return total + self.higher_order(stacked).sum(dim=1) if self.high_orders else total

    def deep_input(self, dense: torch.Tensor, embs: list[torch.Tensor]) -> torch.Tensor:
        parts = embs + ([dense] if self.n_dense else [])
        return torch.cat(parts, dim=1)

    def head(self, dense: torch.Tensor, embs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class MLPModel(CTRModel):
    """Concatenated embeddings → MLP (the iHAS paper's base network)."""

    def __init__(self, spec, cfg, embeddings, device=None, interactions=None, numerical=None):
        super().__init__(spec, cfg, embeddings, device, interactions, numerical)
        self.deep = mlp(self.concat_dim + self.n_dense, cfg.mlp, cfg.dropout)

    def head(self, dense, embs):
        return self.deep(self.deep_input(dense, embs)).squeeze(1)


class FM(CTRModel):
    uses_linear = True
    prunes_pairs = True

    def head(self, dense, embs):
        return self.interaction_sum(embs)


class WideDeep(MLPModel):
    uses_linear = True


class DeepFM(MLPModel):
    uses_linear = True
    prunes_pairs = True

    def head(self, dense, embs):
        return super().head(dense, embs) + self.interaction_sum(embs)


class IPNN(CTRModel):
    """Product-based network with inner products: [embeddings, <e_i, e_j>] → MLP."""

    prunes_pairs = True

    def __init__(self, spec, cfg, embeddings, device=None, interactions=None, numerical=None):
        super().__init__(spec, cfg, embeddings, device, interactions, numerical)
        n_pairs = self.n_fields * (self.n_fields - 1) // 2 if self.pair_index is None else self.pair_index.shape[1]
        self.deep = mlp(self.concat_dim + self.n_dense + n_pairs + self.n_higher, cfg.mlp, cfg.dropout)

    def head(self, dense, embs):
        stacked = stack_zero_padded(embs, self.max_dim)
        inner = pairwise_inner(stacked, self.pair_index)
        products = [inner if self.pair_weight is None else inner * self.pair_weight]
        products += [self.higher_order(stacked)] if self.high_orders else []
        return self.deep(torch.cat([self.deep_input(dense, embs), *products], dim=1)).squeeze(1)


class DCN(CTRModel):
    """Deep & Cross: cross network and MLP side by side on the concatenation."""

    def __init__(self, spec, cfg, embeddings, device=None, interactions=None, numerical=None):
        super().__init__(spec, cfg, embeddings, device, interactions, numerical)
        width = self.concat_dim + self.n_dense
        self.cross = CrossNetwork(width, cfg.cross_layers)
        self.deep = mlp(width, cfg.mlp, cfg.dropout, out_dim=None)
        self.out = nn.Linear(width + (cfg.mlp[-1] if cfg.mlp else width), 1)

    def head(self, dense, embs):
        x0 = self.deep_input(dense, embs)
        return self.out(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(1)


class DLRM(CTRModel):
    """DLRM: bottom MLP on dense values to the widest embedding dim, pairwise dots, top MLP."""

    def __init__(self, spec, cfg, embeddings, device=None, interactions=None, numerical=None):
        cfg = ModelConfig(**{**cfg.__dict__, "dense_input": True})
        super().__init__(spec, cfg, embeddings, device, interactions, numerical)
        self.bottom = mlp(self.n_dense, [max(self.max_dim, 4)], out_dim=self.max_dim) if self.n_dense else None
        n = self.n_fields + (1 if self.bottom is not None else 0)
        self.top = mlp(self.max_dim + n * (n - 1) // 2, cfg.mlp, cfg.dropout)

    def head(self, dense, embs):
        vecs = list(embs)
        if self.bottom is not None:
            vecs.append(self.bottom(dense))
        stacked = stack_zero_padded(vecs, self.max_dim)
        first = vecs[-1] if self.bottom is not None else stacked.mean(dim=1)
        return self.top(torch.cat([first, pairwise_inner(stacked)], dim=1)).squeeze(1)


MODELS: dict[str, type[CTRModel]] = {
    "mlp": MLPModel,
    "fm": FM,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "ipnn": IPNN,
    "dcn": DCN,
    "dlrm": DLRM,
}

