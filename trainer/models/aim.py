"""AIM's interaction model: kept interactions of any order, each with its interaction function.

    logit = bias + ⟨w, x⟩ + Σ_t f_t(e_{t,1}, …, e_{t,p})            (FM base)
          + MLP([e])                                                (DeepFM base)
    IPNN base: MLP([e, f_1(…), …, f_T(…)])

Functions of p embeddings (p = 2 gives the pairwise forms):
    inner          Σ_d Π_s e_s[d]
    vector_kernel  Σ_d φ_t[d] Π_s e_s[d]        (φ_t ∈ ℝ^D per interaction)
    scalar_kernel  φ_t Σ_d Π_s e_s[d]           (φ_t ∈ ℝ per interaction)
    outer          Π_s (w_{t,s}ᵀ e_s)           (the outer product approximated by projections)

Embeddings are either shared by every function or function-wise (one TorchRec table per
field per function). A set stores only the fields some interaction of its function reads
(the first set every field when an MLP reads the embeddings): a (field, function) table
no kept interaction reads would be stored and never used. A field keeps d_i of the D dims (the embedding dimension search):
its table is d_i wide and Map_i places the values at their original positions of a
D-vector, zeros elsewhere, so interactions between fields with different kept dims
multiply matching coordinates and no parameter is added.

The search stages build the same module with gates: every interaction's value passes an
affine-free batch norm and is multiplied by its architecture parameter α (interaction
search), or every field's embedding is multiplied by β_i ∈ ℝ^D (dimension search).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from serving.features import FeatureSpec
from trainer.models.blocks import centre_fields, mlp, tuple_index
from trainer.models.ctr import ModelConfig
from trainer.models.layout import layout_for
from trainer.models.tables import FieldEmbeddings, LinearWeights

FUNCTIONS = ("inner", "vector_kernel", "scalar_kernel", "outer")
AIM_BASES = ("fm", "deepfm", "ipnn")


class Terms(nn.Module):
    """One (order, function) group of interactions over field tuples.

    Args:
        function: one of FUNCTIONS.
        index: [p, T] field positions of the T tuples.
        width: D, the embedding width the functions see.
        gated: multiply each value by α after an affine-free batch norm (a search stage).
        alpha_init: α's starting value.
        centred: (gated only) compute the functions on embeddings centred on their field's
            mean (batch mean in training, running mean in eval): a term then carries no
            main effect of any one of its fields (a labelled search variant, not the paper's).
    """

    def __init__(self, function: str, index: torch.Tensor, width: int, gated: bool = False, alpha_init: float = 1.0,
                 centred: bool = False, n_fields: int = 0):
        super().__init__()
        if function not in FUNCTIONS:
            raise ValueError(f"interaction function {function!r} is not one of {FUNCTIONS}")
        self.function = function
        p, t = index.shape
        self.register_buffer("index", index, persistent=False)
        if function == "vector_kernel":
            self.phi = nn.Parameter(torch.ones(t, width))
        elif function == "scalar_kernel":
            self.phi = nn.Parameter(torch.ones(t))
        elif function == "outer":
            self.w = nn.Parameter(torch.randn(p, t, width) / width ** 0.5)
        self.alpha = nn.Parameter(torch.full((t,), float(alpha_init))) if gated else None
        self.bn = nn.BatchNorm1d(t, affine=False) if gated else None
        self.register_buffer("field_mean", torch.zeros(n_fields, width) if gated and centred else None)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """[B, N, D] → [B, T]."""
        p = self.index.shape[0]
        if self.field_mean is not None:
            stacked = centre_fields(stacked, self.field_mean, self.bn.momentum, self.training)
        if self.function == "outer":
            value = (stacked[:, self.index[0]] * self.w[0]).sum(dim=2)
            for s in range(1, p):
                value = value * (stacked[:, self.index[s]] * self.w[s]).sum(dim=2)
        else:
            product = stacked[:, self.index[0]]
            for s in range(1, p):
                product = product * stacked[:, self.index[s]]
            if self.function == "vector_kernel":
                product = product * self.phi
            value = product.sum(dim=2)
            if self.function == "scalar_kernel":
                value = value * self.phi
        return value if self.alpha is None else self.bn(value) * self.alpha


@dataclass(frozen=True)
class AIMLayout:
    """What the recipe reads of a model's storage: per-field dims and the tables' size."""

    fields: tuple[str, ...]
    dims: tuple[int, ...]
    embedding_params: int
    embedding_bytes: int


class AIMEmbeddings(nn.Module):
    """One FieldEmbeddings per function (function-wise) or one for all ("shared").

    Args:
        spec: the dataset's fields.
        cfg: the model config (embedding_dim = D, init_scale).
        dims: per field, how many of the D dims it keeps.
        positions: per field, the kept positions (sorted, length = dim); missing = the first dim.
        sets: the embedding sets: the functions' names, or ("shared",).
        device: "meta" under DistributedModelParallel.
        stored: per set, the fields it stores (default: every kept field); the others read as zeros.
    """

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig, dims: dict[str, int], positions: dict[str, tuple[int, ...]],
                 sets: tuple[str, ...], device=None, stored: dict[str, set[str]] | None = None):
        super().__init__()
        self.sets = sets
        self.width = cfg.embedding_dim
        every = layout_for(spec, dims)
        stored = stored or {}
        self.tables = nn.ModuleDict({
            s: FieldEmbeddings(spec, {f: d for f, d in dims.items() if s not in stored or f in stored[s]}, cfg.init_scale, device)
            for s in sets})
        self.fields = every.fields
        self.layout = AIMLayout(every.fields, every.dims, sum(t.layout.embedding_params for t in self.tables.values()),
                                sum(t.layout.embedding_bytes for t in self.tables.values()))
        self.placed = []  # fields whose kept dims are not simply the first ones
        for f, d in zip(every.fields, every.dims):
            pos = tuple(positions.get(f, range(d)))
            if len(pos) != d or any(not 0 <= x < self.width for x in pos) or list(pos) != sorted(set(pos)):
                raise ValueError(f"field {f!r}: kept positions {pos} do not fit dim {d} of width {self.width}")
            if pos != tuple(range(d)):
                self.register_buffer(f"pos_{f}", torch.tensor(pos), persistent=False)
                self.placed.append(f)

    def lookup(self, sparse) -> dict[str, list[torch.Tensor]]:
        """Per set, the per-field short embeddings [B, d_i] of the fields it stores."""
        return {s: t(sparse) for s, t in self.tables.items()}

    def placed_stack(self, s: str, embs: list[torch.Tensor]) -> torch.Tensor:
        """Map_i of every field from set s's embeddings: [B, N, D], each field's values at its
        kept positions (zeros for a field the set does not store)."""
        mine = dict(zip(self.tables[s].layout.fields, embs))
        batch = embs[0].shape[0]
        out = []
        for f in self.fields:
            e = mine.get(f)
            full = embs[0].new_zeros(batch, self.width)
            if e is None:
                out.append(full)
                continue
            if f in self.placed:
                out.append(full.index_copy(1, getattr(self, f"pos_{f}"), e))
            else:
                out.append(full if e.shape[1] == 0 else nn.functional.pad(e, (0, self.width - e.shape[1])))
        return torch.stack(out, dim=1)


class AIMModel(nn.Module):
    """The interaction model (see the module docstring).

    Args:
        spec: the dataset's fields.
        cfg: base model config: name in AIM_BASES (fm: no MLP), embedding_dim = D, mlp.
        terms: the interactions, as (field names, function).
        dims / positions: the dimension search's outcome per field (default: all D).
        function_wise: one embedding set per function used, else one shared set.
        device: "meta" under DistributedModelParallel.
        gated: the interaction search's supernet (α and batch norm per interaction; the
            terms named in `fixed` are kept from an earlier stage and not gated).
        eds: the dimension search's supernet (β ∈ ℝ^{N×D} scales every embedding).
        alpha_init / beta_init: starting values of α and β.
        fixed: terms (as in `terms`) that stay ungated in a gated model.
        centred: gated terms read embeddings centred on their field's mean (Terms).
    """

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig, terms: list[tuple[tuple[str, ...], str]],
                 dims: dict[str, int] | None = None, positions: dict[str, tuple[int, ...]] | None = None,
                 function_wise: bool = True, device=None, *, gated: bool = False, eds: bool = False,
                 alpha_init: float = 1.0, beta_init: float = 1.0, fixed: frozenset = frozenset(), centred: bool = False):
        super().__init__()
        if cfg.name not in AIM_BASES:
            raise ValueError(f"AIM's interaction model has bases {AIM_BASES}, not {cfg.name!r}")
        dims = dims if dims is not None else {n: cfg.embedding_dim for n in spec.names}
        used = tuple(f for f in FUNCTIONS if any(fn == f for _, fn in terms)) or ("inner",)
        sets = used if function_wise else ("shared",)
        kept = {n for n, d in dims.items() if d > 0}
        read = {s: {n for names, fn in terms if fn == s or not function_wise for n in names} & kept for s in sets}
        if cfg.name != "fm":  # the MLP reads every field's embedding from the first set
            read[sets[0]] = kept
        stored = {s: fs for s, fs in read.items() if fs}  # a set reading nothing keeps every field (no interaction at all)
        self.embeddings = AIMEmbeddings(spec, cfg, dims, positions or {}, sets, device, stored)
        fields = self.embeddings.fields
        pos = {f: i for i, f in enumerate(fields)}
        groups: dict[tuple[int, str, bool], list] = {}
        for names, fn in terms:
            if all(n in pos for n in names):
                key = (len(names), fn, gated and (tuple(names), fn) not in fixed)
                groups.setdefault(key, []).append(sorted(pos[n] for n in names))
        self.terms = nn.ModuleList(
            Terms(fn, tuple_index(sorted(idx), n), cfg.embedding_dim, g, alpha_init, centred, len(fields))
            for (n, fn, g), idx in sorted(groups.items()))
        self.n_terms = sum(len(idx) for idx in groups.values())
        self.beta = nn.Parameter(torch.full((len(fields), cfg.embedding_dim), float(beta_init))) if eds else None
        self.base = cfg.name
        self.value_embedding_params = 0  # numerical fields are bucketized: every embedding is a table row
        self.uses_linear = cfg.name != "ipnn"
        self.linear = LinearWeights(spec, tuple(spec.names), device) if self.uses_linear else None
        self.first_order_params = sum(f.num_embeddings for f in spec.fields) if self.uses_linear else 0
        self.bias = nn.Parameter(torch.zeros(1))
        concat = sum(self.embeddings.layout.dims)
        self.deep = None
        if cfg.name == "deepfm":
            self.deep = mlp(concat, cfg.mlp, cfg.dropout)
        elif cfg.name == "ipnn":
            self.deep = mlp(concat + self.n_terms, cfg.mlp, cfg.dropout)

    def set_of(self, function: str) -> str:
        return function if function in self.embeddings.sets else self.embeddings.sets[0]

    def forward(self, dense: torch.Tensor, sparse) -> torch.Tensor:
        by_set = self.embeddings.lookup(sparse)
        stacks = {s: self.embeddings.placed_stack(s, e) for s, e in by_set.items()}
        if self.beta is not None:
            stacks = {s: x * self.beta for s, x in stacks.items()}
        values = [t(stacks[self.set_of(t.function)]) for t in self.terms]
        first_set = self.embeddings.sets[0]
        if self.beta is not None:  # the MLP reads the scaled embeddings too, so a zeroed β dim is unused everywhere
            plain = stacks[first_set].flatten(1)
        else:
            plain = torch.cat(by_set[first_set], dim=1)
        if self.base == "ipnn":
            logit = self.deep(torch.cat([plain, *values], dim=1)).squeeze(1)
        else:
            logit = sum(v.sum(dim=1) for v in values) if values else plain.new_zeros(plain.shape[0])
            if self.deep is not None:
                logit = logit + self.deep(plain).squeeze(1)
        logit = logit + self.bias
        return logit + self.linear(sparse) if self.linear is not None else logit
