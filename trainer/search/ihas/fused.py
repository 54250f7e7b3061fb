"""Routed iHAS bundles as one program: one table lookup, the router, K MLP heads fused into one.

Scoring a routed bundle the straightforward way costs a program call for the router, then
per cluster a split of the batch, a lookup and an MLP (per-cluster tables), or per head a
column gather and a small matmul per layer (one shared table set): at batch 100 those
graph ops, not the arithmetic, make a routed bundle slower than Base. Here:

* every table the bundle scores with (the shared set, or each cluster's own tables, and
  the id mixture's log-probabilities) sits in one TorchRec EmbeddingBagCollection — a field
  read by several tables is one KJT feature that TorchRec feeds to each — so a row is
  looked up once, into one [B, W] tensor at the tables' stored widths;
* the id-mixture router is one [W, K] matmul (ones on each field's log-probability columns)
  plus the log priors; the gate router reads the kept columns;
* the K heads are one MLP with a head's number of layers: layer 1 is one [K·h1, W + dense]
  matrix whose head-k rows hold head k's weights on the columns it reads and zeros
  elsewhere (slices, concatenation and gather become part of the matmul); deeper layers are
  the heads' layers stacked block-diagonally, the last giving the K logits.

Every row is scored by every head and its cluster's logit is picked: with the paper's small
heads that is cheaper than splitting the batch. A zero weight adds an exact zero to a sum,
so each logit differs from its own head's only in float32 summation order (~1e-7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from trainer.models.ctr import MLPModel
from trainer.models.tables import FieldEmbeddings

if TYPE_CHECKING:
    from trainer.search.ihas.mixture import MixtureRouter
    from trainer.search.ihas.shared import SharedTablesModel


def _linears(head: nn.Sequential) -> list[nn.Linear]:
    if any(not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)) for m in head):
        raise ValueError("fused heads need ReLU MLP heads (Linear, ReLU, Dropout)")
    return [m for m in head if isinstance(m, nn.Linear)]


@torch.no_grad()
def fuse_mlps(heads: list[nn.Sequential], columns: list[list[int]], width: int, out_bias: list[float]) -> nn.Sequential:
    """One ReLU MLP [B, width] → [B, K] equal to the K heads.

    Args:
        heads: K ReLU MLPs with the same number of layers, each ending in one output.
        columns: per head, the position in the fused input of each of its inputs.
        width: the fused input's width.
        out_bias: per head, a constant added to its logit (a model's separate bias).
    """
    layers = [_linears(h) for h in heads]
    if len({len(ls) for ls in layers}) != 1:
        raise ValueError("fused heads need the same number of layers")
    out: list[nn.Module] = []
    depth = len(layers[0])
    for i in range(depth):
        parts = [ls[i] for ls in layers]
        fused = nn.Linear(width if i == 0 else sum(p.in_features for p in parts), sum(p.out_features for p in parts))
        fused.weight.zero_()
        row = col = 0
        for k, p in enumerate(parts):
            rows = slice(row, row + p.out_features)
            if i == 0:
                fused.weight[rows, columns[k]] = p.weight
            else:
                fused.weight[rows, col: col + p.in_features] = p.weight
            fused.bias[rows] = p.bias + (out_bias[k] if i == depth - 1 else 0.0)
            row, col = row + p.out_features, col + p.in_features
        out += [fused, nn.ReLU()] if i < depth - 1 else [fused]
    return nn.Sequential(*out).requires_grad_(False)


def _stored_order(ebc: EmbeddingBagCollection) -> tuple[tuple[str, ...], dict[str, int]]:
    """The pooled output's keys in order and each key's first column (read from one empty lookup)."""
    features = sorted({f for c in ebc.embedding_bag_configs() for f in c.feature_names})
    empty = KeyedJaggedTensor.from_lengths_sync(keys=features, values=torch.zeros(0, dtype=torch.long),
                                                lengths=torch.zeros(len(features), dtype=torch.long))
    kt = ebc(empty)
    starts = torch.tensor([0] + kt.length_per_key()).cumsum(0).tolist()
    return tuple(kt.keys()), dict(zip(kt.keys(), starts))


class FusedRouted(nn.Module):
    """(dense, sparse) → (logits of every cluster's head [B, K], cluster id [B]).

    Args:
        ebc: every table the program reads.
        heads: the fused MLP over [stored lookup, dense].
        n_dense: dense inputs the heads read (appended after the lookup).
        route_matrix: [W, K] summing each cluster's log-probability columns (id mixture), or None.
        log_prior: [K] with `route_matrix`.
        router: else a module mapping the stored columns `router_columns` to cluster ids.
    """

    def __init__(self, ebc: EmbeddingBagCollection, heads: nn.Sequential, n_dense: int, *,
                 route_matrix: torch.Tensor | None = None, log_prior: torch.Tensor | None = None,
                 router: nn.Module | None = None, router_columns: torch.Tensor | None = None):
        super().__init__()
        if (route_matrix is None) == (router is None):
            raise ValueError("a fused program routes by the mixture's columns or by a router module, exactly one")
        self.ebc, self.heads, self.n_dense, self.router = ebc, heads, n_dense, router
        self.order, _ = _stored_order(ebc)
        self.register_buffer("route_matrix", route_matrix)
        self.register_buffer("log_prior", None if log_prior is None else log_prior.detach().clone().float())
        self.register_buffer("router_columns", router_columns)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        kt = self.ebc(sparse)
        if tuple(kt.keys()) != self.order:
            raise RuntimeError(f"lookup keys {kt.keys()} are not the fused layer's order {self.order}")
        stored = kt.values()
        if self.router is None:
            clusters = (stored @ self.route_matrix + self.log_prior).argmax(dim=1)
        else:
            kept = stored if self.router_columns is None else stored.index_select(1, self.router_columns)
            clusters = self.router(kept)
        x = torch.cat([stored, dense], dim=1) if self.n_dense else stored
        return self.heads(x), clusters


def _keys(ebc: EmbeddingBagCollection) -> dict[tuple[str, str], str]:
    """(feature, table) → the feature's key in the pooled output: TorchRec names a feature
    that several tables read "feature@table"."""
    pairs = [(f, c.name) for c in ebc.embedding_bag_configs() for f in c.feature_names]
    reads = {f: sum(g == f for g, _ in pairs) for f, _ in pairs}
    return {(f, t): f"{f}@{t}" if reads[f] > 1 else f for f, t in pairs}


def _field_columns(embeddings: FieldEmbeddings, start: dict[str, int], keys: dict[tuple[str, str], str],
                   prefix: str = "") -> list[int]:
    """Stored positions of a model's concatenated lookup (each field's first d columns);
    `prefix`: what the fused collection prepends to the model's table names."""
    table = {f: prefix + c.name for c in embeddings.ebc.embedding_bag_configs() for f in c.feature_names}
    return [start[keys[(f, table[f])]] + j for f, d in zip(embeddings.layout.fields, embeddings.layout.dims) for j in range(d)]


def _route_matrix(first: list[int], k: int, width: int) -> torch.Tensor:
    """[width, K] summing, per cluster g, column first_f + g of every field f (the fields'
    K mixture log-probabilities start at `first`)."""
    m = torch.zeros(width, k)
    for col in first:
        m[torch.arange(col, col + k), torch.arange(k)] = 1.0
    return m


def shared_program(model: SharedTablesModel) -> FusedRouted:
    """The served form of a shared-tables model: its own table set, router and heads."""
    ebc = model.embeddings.ebc
    _, start = _stored_order(ebc)
    width = sum(c.embedding_dim for c in ebc.embedding_bag_configs())
    lookup = torch.tensor(_field_columns(model.embeddings, start, _keys(ebc)), dtype=torch.long)  # the model's lookup → stored
    prefix = "lookup_columns" if model.mixture_k else "columns"
    dense = list(range(width, width + model.n_dense))
    columns = [lookup[getattr(model, f"{prefix}_{k}")].tolist() + dense for k in range(len(model.heads))]
    heads = fuse_mlps(list(model.heads), columns, width + model.n_dense, [0.0] * len(model.heads))
    if model.mixture_k:
        fields = model.embeddings.layout.fields
        first = [start[f] + kept for f, kept in zip(fields, model.kept_widths)]  # log-probabilities follow the kept columns
        return FusedRouted(ebc, heads, model.n_dense, log_prior=model.log_prior,
                           route_matrix=_route_matrix(first, model.mixture_k, width))
    unpad = None if len(lookup) == width else lookup
    return FusedRouted(ebc, heads, model.n_dense, router=model.router, router_columns=unpad)


def fusable(models: list[nn.Module]) -> bool:
    """Cluster models the fused program can hold: plain MLP heads over table embeddings."""
    return all(type(m) is MLPModel and isinstance(m.embeddings, FieldEmbeddings) and m.embeddings.ebc is not None
               and not m.embeddings.first_order and m.numerical is None and not m.dense_has_nan for m in models)


@torch.no_grad()
def cluster_program(models: list[MLPModel], router: MixtureRouter) -> FusedRouted:
    """The served form of per-cluster models routed by the id mixture: every cluster's
    tables (renamed c<k>_<table>) and the mixture's in one collection."""
    if not fusable(models):
        raise ValueError("only plain MLP cluster models over table embeddings fuse into one program")
    sources = [(f"c{k}_", m.embeddings.ebc) for k, m in enumerate(models)] + [("", router.tables.ebc)]
    configs, weights = [], {}
    for prefix, source in sources:
        for c in source.embedding_bag_configs():
            configs.append(EmbeddingBagConfig(name=prefix + c.name, feature_names=list(c.feature_names),
                                              num_embeddings=c.num_embeddings, embedding_dim=c.embedding_dim,
                                              pooling=c.pooling))
            weights[prefix + c.name] = source.embedding_bags[c.name].weight
    ebc = EmbeddingBagCollection(tables=configs, device="cpu")
    for name, w in weights.items():
        ebc.embedding_bags[name].weight.copy_(w)
    _, start = _stored_order(ebc)
    keys = _keys(ebc)
    width = sum(c.embedding_dim for c in configs)
    n_dense = models[0].n_dense
    dense = list(range(width, width + n_dense))
    columns = [_field_columns(m.embeddings, start, keys, f"c{k}_") + dense for k, m in enumerate(models)]
    heads = fuse_mlps([m.deep for m in models], columns, width + n_dense, [float(m.bias) for m in models])
    first = [start[keys[(f, c.name)]] for c in router.tables.ebc.embedding_bag_configs() for f in c.feature_names]
    return FusedRouted(ebc, heads, n_dense, log_prior=router.log_prior,
                       route_matrix=_route_matrix(first, len(router.log_prior), width))
