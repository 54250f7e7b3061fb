"""iHAS-shared (a labelled variant, not the paper's): the router and every cluster model read
one set of tables.

The paper serves the search-stage tables and gates as the router and, beside them, one
model per cluster with its own tables, so a routed bundle stores every field's table
K + 1 times. Here one module holds:

* one TorchRec table per field with only the columns some cluster keeps (a column no
  cluster keeps is dropped from the table);
* the router: the trained gates with their input cut to those columns (a dropped column
  reads as a constant, its train mean, folded into the gates' bias and the distances), the
  deterministic threshold and the K-means centroids;
* one MLP head per cluster over its own kept columns.

With the id-mixture clustering (`RouterDecision.features == "ids"`, iHAS-ids) there are no
gates in the router: each field's table holds, after its kept columns, the K log-probabilities
log θ_{g,f}(id) of the mixture (trainer.search.ihas.mixture), which the router sums over the
fields with the log priors. Those columns never reach a head, so they get no gradient and
keep their fitted values while the tables train (under the sharded tables' fused row-wise
optimizers; an unsharded table under weight decay would shrink them by it).

A row's embeddings are looked up once; the router picks the cluster and that cluster's head
scores the row. Every head runs on every row and the row's own logit is gathered: with
the paper's small heads this costs less than splitting the batch by cluster, and it keeps
the program one straight-line graph for torch.export.

Training: the tables start from the search-stage tables (the gates were trained on those
embeddings; fresh tables would route rows at random), each head from the search-stage
MLP cut to its cluster's columns. By default tables and heads then train jointly on every
row, each row through its own cluster's head: the router's parameters stay frozen, but it
reads the tables as they train, so a row may change cluster during training; what serves
is the final routing, which is also what the offline scores use. `train_tables=False`
trains the heads alone on the search's tables (the routing never moves).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from serving.features import FeatureSpec
from trainer.decisions import Decisions
from trainer.models.blocks import mlp
from trainer.models.ctr import CTRModel, ModelConfig
from trainer.models.tables import FieldEmbeddings
from trainer.search.ihas.fused import shared_program
from trainer.search.ihas.gates import MLPGates, SharedGates
from trainer.search.ihas.mixture import Mixture
from trainer.search.ihas.warm_start import FIRST_LAYER, TABLE


def union_columns(decisions: Decisions) -> dict[str, list[int]]:
    """Field → the searched columns at least one cluster keeps (sorted)."""
    out: dict[str, set] = {}
    for c in decisions.clusters:
        for f, cols in c.kept.items():
            out.setdefault(f, set()).update(cols)
    return {f: sorted(cols) for f, cols in out.items()}


class CutGates(nn.Module):
    """The trained gates of the search reading only the kept columns of E.

    Args:
        gates: InstanceGates, FieldGates, MLPGates or SharedGates of width N·d.
        cols: positions in E (length N·d) of the columns the shared table keeps.
        fill: [N·d] the value each dropped column reads as (folded into the first bias).
    """

    def __init__(self, gates: nn.Module, cols: list[int], fill: torch.Tensor):
        super().__init__()
        self.threshold, self.dims_per_gate = gates.threshold, gates.dims_per_gate
        self.first: nn.Linear | None = None
        self.rest: nn.Module = nn.Identity()
        if isinstance(gates, SharedGates):  # no input: one logit vector for every row
            self.register_buffer("logit", gates.logit.detach().clone())
            return
        self.register_buffer("logit", None)
        layer = gates.net[0] if isinstance(gates, MLPGates) else gates.fc
        self.first = nn.Linear(len(cols), layer.out_features)
        dropped = sorted(set(range(layer.in_features)) - set(cols))
        with torch.no_grad():
            self.first.weight.copy_(layer.weight[:, cols])
            self.first.bias.copy_(layer.bias + layer.weight[:, dropped] @ fill[dropped])
        if isinstance(gates, MLPGates):
            self.rest = copy.deepcopy(nn.Sequential(*list(gates.net)[1:]))
        self.requires_grad_(False)

    def forward(self, kept: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid gate logits [B, gates] (one gate per `dims_per_gate` searched columns)."""
        if self.first is None:
            return self.logit.expand(kept.shape[0], -1)
        return self.rest(self.first(kept))


class GateRouter(nn.Module):
    """The search's Router (deterministic gates, nearest centroid) over the kept columns only,
    computed over the whole batch at once.

    Args:
        gates: the trained gates of the search (width N·d).
        r: the decisions' router (centroids, per-feature scale, what is clustered).
        searched: positions in E (length N·d) of the kept columns, in lookup order.
        width: N·d.
        fill: [N·d] what each dropped column reads as; None = 0.
    """

    def __init__(self, gates: nn.Module, r, searched: list[int], width: int, fill: torch.Tensor | None):
        super().__init__()
        self.features = r.features
        fill = torch.zeros(width) if fill is None else fill.detach().float()
        self.gates = CutGates(gates, searched, fill)
        # argmin_k |x·s − c_k|² = argmax_k (x·(s⊙c_k) − |c_k|²/2): the row's own |x|² drops
        # out; for E ⊙ m the kept columns contribute (E ⊙ m)·(s⊙c_k) and a dropped column j,
        # read as fill_j, contributes m_j · fill_j (s⊙c_k)_j
        c = torch.tensor(r.centroids, dtype=torch.float32)
        w = c * (torch.tensor(r.scale, dtype=torch.float32) if r.scale is not None else 1.0)
        masked = r.features == "masked"
        dropped = sorted(set(range(width)) - set(searched)) if masked else []
        per_gate = self.gates.dims_per_gate
        self.register_buffer("gate_columns", torch.tensor(searched, dtype=torch.long) // per_gate if masked else None)
        self.register_buffer("dropped_gates", torch.tensor(dropped, dtype=torch.long) // per_gate if dropped else None)
        self.register_buffer("dropped_weight", (fill[dropped, None] * w[:, dropped].T).contiguous() if dropped else None)
        self.register_buffer("route_weight", (w[:, searched] if masked else w).T.contiguous())
        self.register_buffer("route_bias", c.pow(2).sum(1) / 2)

    @torch.no_grad()
    def forward(self, kept: torch.Tensor) -> torch.Tensor:
        """Cluster id per row from the kept-column embeddings [B, U]."""
        logits = self.gates(kept)
        n = self.gates.dims_per_gate
        if self.features in ("masked", "mask"):
            thresholds = self.gates.threshold.logit_thresholds(logits)[:, None]
            if self.features == "masked":
                x = kept * (logits.index_select(1, self.gate_columns) > thresholds).to(kept.dtype)
                score = x @ self.route_weight - self.route_bias
                if self.dropped_gates is not None:
                    score = score + (logits.index_select(1, self.dropped_gates) > thresholds).to(kept.dtype) @ self.dropped_weight
                return score.argmax(dim=1)
            else:
                x = (logits > thresholds).to(kept.dtype).repeat_interleave(n, 1)
        else:
            x = (torch.sigmoid(logits) if self.features == "prob" else logits).repeat_interleave(n, 1)
        return (x @ self.route_weight - self.route_bias).argmax(dim=1)


class SharedTablesModel(nn.Module):
    """One table set, the router and K cluster heads (module docstring).

    Args:
        spec: the dataset's fields.
        cfg: the model config (an MLP head: model.name "mlp").
        decisions: clustered iHAS decisions (kept columns per cluster, router).
        gates: the trained gates of the search.
        device: "meta" when DistributedModelParallel will materialise the tables.
        train_tables: False = the tables stay as the search left them (no gradient reaches
            them), so every row keeps the search's routing and only the heads train.
        fill: [N·d] what the router reads for each dropped column (`column_means`: its
            train mean, so the gates see what they saw on average); None = 0.
    """

    first_order_params = 0
    value_embedding_params = 0  # numerical fields are bucketized here: every embedding is a table row

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig, decisions: Decisions, gates: nn.Module, device=None,
                 train_tables: bool = True, fill: torch.Tensor | None = None, mixture: Mixture | None = None):
        super().__init__()
        self.train_tables = train_tables
        r, d = decisions.router, decisions.details["embedding_dim"]
        self.union = union_columns(decisions)
        by_ids = r.features == "ids"
        if by_ids and mixture is None:
            raise ValueError("routing by ids needs the fitted mixture")
        self.mixture_k = len(decisions.clusters) if by_ids else 0
        widths = {f: len(self.union.get(f, [])) + self.mixture_k for f in spec.names}
        self.embeddings = FieldEmbeddings(spec, {f: w for f, w in widths.items() if w}, cfg.init_scale, device)
        fields = self.embeddings.layout.fields
        self.kept_widths = [len(self.union.get(f, [])) for f in fields]
        position = {(f, j): i for i, (f, j) in enumerate((f, j) for f in fields for j in self.union.get(f, []))}
        self.n_dense = len(spec.numerical) if cfg.dense_input else 0
        self.heads = nn.ModuleList()
        for k, c in enumerate(decisions.clusters):
            cols = [position[(f, j)] for f in fields for j in c.kept[f]]
            self.register_buffer(f"columns_{k}", torch.tensor(cols, dtype=torch.long))
            self.heads.append(mlp(len(cols) + self.n_dense, cfg.mlp, cfg.dropout))
        if by_ids:
            self.register_buffer("log_prior", torch.as_tensor(mixture.log_prior, dtype=torch.float32))
            self.mixture_tables = {f: mixture.log_theta[spec.names.index(f)] for f in fields}  # written by the warm start
            # Positions in the concatenated lookup [B, Σ (kept_f + K)]: the heads and the router
            # index it directly, two gathers instead of a slice per field.
            starts = torch.tensor([0] + [w + self.mixture_k for w in self.kept_widths]).cumsum(0).tolist()
            kept_at = torch.tensor([s + j for s, w in zip(starts, self.kept_widths) for j in range(w)], dtype=torch.long)
            self.register_buffer("mixture_columns", torch.tensor(
                [s + w + g for s, w in zip(starts, self.kept_widths) for g in range(self.mixture_k)], dtype=torch.long))
            for k in range(len(self.heads)):
                self.register_buffer(f"lookup_columns_{k}", kept_at[getattr(self, f"columns_{k}")])
            return
        searched = [spec.names.index(f) * d + j for f in fields for j in self.union[f]]
        self.router = GateRouter(gates, r, searched, len(spec.names) * d, fill)

    def score_all(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of every cluster's head [B, K], cluster id [B])."""
        looked_up = torch.cat(self.embeddings(sparse), dim=1)  # the kept columns (and, routing by ids, the mixture's)
        columns = "lookup_columns" if self.mixture_k else "columns"
        if self.mixture_k:
            loglik = looked_up.detach().index_select(1, self.mixture_columns).view(-1, len(self.kept_widths), self.mixture_k)
            clusters = (loglik.sum(dim=1) + self.log_prior).argmax(dim=1)
        else:
            clusters = self.router(looked_up.detach())
        if not self.train_tables:
            looked_up = looked_up.detach()
        logits = []
        for k, head in enumerate(self.heads):
            x = looked_up.index_select(1, getattr(self, f"{columns}_{k}"))
            logits.append(head(torch.cat([x, dense], dim=1) if self.n_dense else x).squeeze(1))
        return torch.stack(logits, dim=1), clusters

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        logits, clusters = self.score_all(dense, sparse)
        return logits.gather(1, clusters[:, None]).squeeze(1)

    def routed_program(self) -> nn.Module:
        """What the bundle exports: (dense, sparse) → (logits [B, K], cluster ids [B]), the
        heads fused into one MLP (trainer.search.ihas.fused)."""
        return shared_program(self)


@torch.no_grad()
def column_means(searched: CTRModel, counts: dict) -> torch.Tensor:
    """[N·d] each searched column's mean over the training rows: the id-count-weighted mean of
    its table column (exact for one id per row; for a mean-pooled bag, the mean over its ids)."""
    out = []
    for f, d in zip(searched.embeddings.layout.fields, searched.embeddings.layout.dims):
        w = searched.embeddings.ebc.embedding_bags[f"t_{f}"].weight[:, :d]
        n = torch.as_tensor(counts[f], dtype=w.dtype)
        out.append(n @ w / n.sum().clamp(min=1))
    return torch.cat(out)


@torch.no_grad()
def shared_warm_state(searched: CTRModel, model: SharedTablesModel) -> dict[str, torch.Tensor]:
    """`model`'s state with the tables cut from the search-stage tables and each head's
    first layer cut from the search-stage MLP's (deeper layers copied)."""
    source, state = searched.state_dict(), {}
    b_lay = searched.embeddings.layout
    start = dict(zip(b_lay.fields, torch.tensor((0,) + b_lay.dims[:-1]).cumsum(0).tolist()))
    fields = model.embeddings.layout.fields
    union_pos = [start[f] + j for f in fields for j in model.union[f]]
    last = f"{len(model.heads[0]) - 1}.bias"  # the base model's separate output bias folds into it
    for key, value in model.state_dict().items():
        if key.startswith(TABLE):
            f = key[len(TABLE):].rsplit(".", 1)[0]
            w = torch.zeros_like(value)
            kept = model.union.get(f, [])
            w[:, : len(kept)] = source[key][:, kept]
            if model.mixture_k:
                w[:, len(kept): len(kept) + model.mixture_k] = torch.from_numpy(model.mixture_tables[f])
            state[key] = w
        elif key.startswith("heads."):
            k, rest = key[len("heads."):].split(".", 1)
            src = source["deep." + rest]
            if "deep." + rest == FIRST_LAYER:
                cols = [union_pos[i] for i in getattr(model, f"columns_{k}").tolist()]
                src = src[:, cols + [searched.concat_dim + j for j in range(model.n_dense)]]
            state[key] = src + source["bias"] if rest == last else src.clone()
        else:
            state[key] = value.clone()
    return state
