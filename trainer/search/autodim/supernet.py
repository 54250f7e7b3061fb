"""The AutoDim search-stage embeddings: every field mixes candidate dims.

Per field m and candidate dim d_k, a table of that width looks the field's ids up
(e_m^k, d_k wide; one TorchRec EmbeddingBagCollection holds every (field, candidate)
table, each fed by the field's own feature); a linear map lifts it to the common dim,
batch norm without affine parameters makes the candidates comparable in magnitude
(ẽ_m^k = s·BN(W_m^k e_m^k + b_m^k)), and the field's output is Σ_k p_m^k ẽ_m^k with
p_m = Gumbel-softmax(α_m, τ), τ = max(τ_min, start − s·decay) at weight step s.
The head sees every field at the common dim; only the searched weights ever do.

BN output scale s: the paper's s = 1 hands the head unit-variance embeddings; DeepFM's
FM term then sums 28 inner products of 32 unit-variance dims (ML-100K: the supernet's
training loss went 2.52 → 1.63 and its validation AUC stayed at 0.51–0.54 over four
search epochs, vs Base 0.79; with s = 0.1, 0.74 → 0.77 over three), and α collapses to the
smallest candidate on every field. On Wide & Deep, which sums no inner products, s = 1 trains
normally and both scales choose and score alike (docs/results.md, AutoDim). A constant s < 1,
the same for every candidate and field, keeps the candidates compared at one magnitude and
brings it near what a trained table holds.

Gumbel noise is drawn per batch (its rows share one sample of p_m) or per row (the
clock's `per_row`). Phases (set by the
method): "pretrain" = the fixed mixture softmax(α) (α is not trained then), "search" =
the stochastic mixture (straight-through one-hot forward with `hard`), "eval" = the
derived architecture, argmax α per field (its BN in running-statistics mode under
model.eval()).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from serving.features import FeatureSpec
from trainer.models.layout import EmbeddingLayout, layout_for
from trainer.models.tables import table_configs
from trainer.search.gumbel import GumbelClock

PHASES = ("pretrain", "search", "eval")


def candidate_prefix(dim: int) -> str:
    return f"d{dim}_"


@dataclass(frozen=True)
class SearchLayout(EmbeddingLayout):
    """The head's view (every field at the common dim) whose sizes are those of the
    candidate tables the supernet actually stores.

    Args:
        candidates: one layout per candidate dim (every field at that dim).
    """

    candidates: tuple[EmbeddingLayout, ...] = ()

    @property
    def embedding_params(self) -> int:
        return sum(c.embedding_params for c in self.candidates)

    @property
    def embedding_bytes(self) -> int:
        return sum(c.embedding_bytes for c in self.candidates)


class DimSearchEmbeddings(nn.Module):
    """Per field, K candidate tables → linear map to `common_dim` → BN → Gumbel-softmax mix.

    Args:
        spec: the dataset's fields (every field is searched).
        candidates: the candidate dims every field chooses from.
        common_dim: width of the mixed embedding the head sees.
        init_scale: tables start uniform in ±init_scale.
        clock: the Gumbel temperature and hard / soft sampling of the search phase.
        bn_scale: s, the constant every BN output is multiplied by (1 = the paper).
        bn_affine: each BN learns a per-coordinate scale and shift (not the paper's).
    """

    first_order_in_column = False  # the head's first-order weights keep their own tables

    def __init__(self, spec: FeatureSpec, candidates: list[int], common_dim: int, init_scale: float = 0.01,
                 clock: GumbelClock | None = None, bn_scale: float = 1.0, bn_affine: bool = False):
        super().__init__()
        self.candidates = list(candidates)
        self.fields = list(spec.names)
        self.layout = SearchLayout(layout_for(spec, {n: common_dim for n in self.fields}).tables,
                                   tuple(layout_for(spec, {n: d for n in self.fields}) for d in self.candidates))
        configs = [c for d in self.candidates
                   for c in table_configs(spec, {n: d for n in self.fields}, prefix=candidate_prefix(d), init_scale=init_scale)]
        self.ebc = EmbeddingBagCollection(tables=configs)
        self.maps = nn.ModuleDict({n: nn.ModuleList(nn.Linear(d, common_dim) for d in self.candidates) for n in self.fields})
        self.bns = nn.ModuleDict({n: nn.ModuleList(nn.BatchNorm1d(common_dim, affine=bn_affine) for _ in self.candidates)
                                  for n in self.fields})
        self.alpha = nn.Parameter(torch.zeros(len(self.fields), len(self.candidates)))
        self.clock = clock or GumbelClock()
        self.bn_scale = bn_scale
        self.phase = "pretrain"

    def chosen(self) -> dict[str, int]:
        """argmax α → the dim of every field."""
        return {n: self.candidates[i] for n, i in zip(self.fields, self.alpha.argmax(dim=1).tolist())}

    def _stochastic(self) -> bool:
        """Whether this forward draws the Gumbel-softmax mixture (search-phase training)."""
        return self.phase == "search" and self.training and torch.is_grad_enabled()

    def mixing_weights(self, batch: int) -> torch.Tensor:
        """[fields, batch, K] candidate weights of this forward in the current phase."""
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r} is not one of {PHASES}")
        logits = self.alpha.unsqueeze(1).expand(-1, batch, -1)
        if self._stochastic():
            return self.clock.sample(logits)
        if self.phase == "pretrain":
            return torch.softmax(logits, dim=-1)
        return nn.functional.one_hot(logits.argmax(dim=-1), len(self.candidates)).to(logits.dtype)

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        return self.lookup(sparse)[0]

    def lookup(self, sparse: KeyedJaggedTensor) -> tuple[list[torch.Tensor], None]:
        """(per-field mixed embeddings [B, common_dim], None: no first-order weights here)."""
        if self._stochastic():
            self.clock.tick()
        pooled = self.ebc(sparse).to_dict()
        batch = sparse.stride()
        weights = self.mixing_weights(batch)
        out = []
        for i, name in enumerate(self.fields):
            if self.phase == "eval":  # one-hot: only the chosen candidate contributes
                k = int(self.alpha[i].argmax())
                out.append(self._candidate(name, k, pooled))
                continue
            terms = torch.stack([self._candidate(name, k, pooled) for k in range(len(self.candidates))], dim=1)
            out.append((weights[i].unsqueeze(-1) * terms).sum(dim=1))
        return out, None

    def _candidate(self, name: str, k: int, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        d = self.candidates[k]
        e = pooled[f"{name}@{candidate_prefix(d)}{name}"][:, :d]
        return self.bns[name][k](self.maps[name][k](e)) * self.bn_scale
