"""Numerical fields embedded from their value: AutoDis, and the raw-scalar baseline.

AutoDis (automatic discretization), per numerical field j with H meta-embeddings
ME_j ∈ R^{H×d}, on the field's dense input x (serving.batch.dense_column: standardised
signed log of the raw value):
  logits  linear:      x̂_h = w_jh · x
          leaky_skip:  h = LeakyReLU(w_j · x) ∈ R^H, x̂ = W_j h + skip · h   (the paper's network)
  p = softmax(x̂ / τ) over the H meta-embeddings
  e = max:       ME_j[argmax_h p_h]              (the most likely meta-embedding)
      topk:      Σ_{h in top-K of p} ME_jh       (sum of the K most likely, unweighted)
      weighted:  Σ_h p_h ME_jh                   (weighted average)
"max" and "topk" pick meta-embeddings by an argmax / top-K, which has no gradient: as in
the paper, their projections never train and only the picked meta-embeddings learn; only
"weighted" trains the discretization end to end. Their projections are therefore frozen
(requires_grad False) rather than left without gradients, which DDP would refuse.

Raw scalar (the baseline): e = x · v_j, one learned vector per field scaled by the value.

Missing values: the dense input of a missing value is NaN; every embedded field has one
learned missing embedding m_j ∈ R^d that replaces e for those rows (under both AutoDis and
raw scalar), so "missing" carries its own signal and never passes through the projection.
"""

from __future__ import annotations

import torch
from torch import nn

from serving.features import FeatureSpec
from trainer.decisions import AutoDisSettings

LEAKY_SLOPE = 0.01  # torch's default negative slope, as the paper does not name one


class NumericalEmbeddings(nn.Module):
    """Embeds some numerical fields from the model's dense input.

    Args:
        spec: the dataset's fields (fixes each field's dense column).
        kinds: field → "autodis" or "scalar"; every field must be numerical.
        dim: embedding dim of every embedded field.
        settings: the AutoDis settings (needed when a field is "autodis").
        init_scale: meta-, scalar and missing embeddings start uniform in ±init_scale.
    """

    def __init__(self, spec: FeatureSpec, kinds: dict[str, str], dim: int, settings: AutoDisSettings | None,
                 init_scale: float):
        super().__init__()
        not_numerical = sorted(set(kinds) - set(spec.numerical))
        if not_numerical:
            raise ValueError(f"fields {not_numerical} are not numerical: only numerical fields embed their value")
        self.names = [n for n in spec.numerical if n in kinds]
        self.dims = [dim] * len(self.names)
        auto = [n for n in self.names if kinds[n] == "autodis"]
        scalar = [n for n in self.names if kinds[n] == "scalar"]
        if auto and settings is None:
            raise ValueError("autodis fields need AutoDis settings")
        self.settings = settings
        # each field's dense column, and where it lands among the concatenated groups (buffers: the
        # bundle counts them, so the report must too)
        cols = {n: spec.numerical.index(n) for n in self.names}
        self.register_buffer("cols_auto", torch.tensor([cols[n] for n in auto], dtype=torch.long))
        self.register_buffer("cols_scalar", torch.tensor([cols[n] for n in scalar], dtype=torch.long))
        order = auto + scalar
        self.register_buffer("order", torch.tensor([order.index(n) for n in self.names], dtype=torch.long))
        self.missing = nn.Parameter(torch.empty(len(self.names), dim).uniform_(-init_scale, init_scale))
        self.auto = AutoDis(len(auto), dim, settings, init_scale) if auto else None
        self.scalar = nn.Parameter(torch.empty(len(scalar), dim).uniform_(-init_scale, init_scale)) if scalar else None

    @property
    def embedding_params(self) -> int:
        """Stored embeddings (meta-, scalar and missing embeddings), not the discretization network."""
        tables = [self.missing, self.scalar] + ([self.auto.meta] if self.auto is not None else [])
        return sum(t.numel() for t in tables if t is not None)

    def forward(self, dense: torch.Tensor) -> list[torch.Tensor]:
        """dense [B, n_numerical] (NaN = missing) → one [B, dim] embedding per field, in `names` order."""
        parts = []
        if self.auto is not None:
            parts.append(self.auto(dense.index_select(1, self.cols_auto)))
        if self.scalar is not None:
            x = dense.index_select(1, self.cols_scalar)
            parts.append(torch.nan_to_num(x, nan=0.0).unsqueeze(2) * self.scalar)
        x = dense.index_select(1, torch.cat([self.cols_auto, self.cols_scalar]))
        e = torch.cat(parts, dim=1).index_select(1, self.order)
        missing = torch.isnan(x).index_select(1, self.order).unsqueeze(2)
        return list(torch.where(missing, self.missing, e).unbind(1))


class AutoDis(nn.Module):
    """AutoDis over F fields at once (see the module docstring).

    Args:
        fields: F, the fields embedded.
        dim: d, the embedding dim.
        settings: H, τ, aggregation, K, projection.
        init_scale: meta-embeddings start uniform in ±init_scale.
    """

    def __init__(self, fields: int, dim: int, settings: AutoDisSettings, init_scale: float):
        super().__init__()
        h = settings.buckets
        self.settings = settings
        self.meta = nn.Parameter(torch.empty(fields, h, dim).uniform_(-init_scale, init_scale))
        # slopes of unit scale: standardised inputs then spread the H logits over a few units
        trains = settings.aggregation == "weighted"
        self.w = nn.Parameter(torch.randn(fields, h), requires_grad=trains)
        self.mix = None
        if settings.projection == "leaky_skip":
            self.mix = nn.Parameter(torch.empty(fields, h, h), requires_grad=trains)
            with torch.no_grad():
                for m in self.mix:
                    nn.init.xavier_uniform_(m)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, F] (finite) → softmax(x̂ / τ) [B, F, H]."""
        logits = x.unsqueeze(2) * self.w
        if self.mix is not None:
            hidden = nn.functional.leaky_relu(logits, LEAKY_SLOPE)
            logits = torch.einsum("bfh,fgh->bfg", hidden, self.mix) + self.settings.skip * hidden
        return torch.softmax(logits / self.settings.temperature, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, F] (NaN rows get some embedding; the caller replaces them) → [B, F, d]."""
        p = self.probabilities(torch.nan_to_num(x, nan=0.0))
        how = self.settings.aggregation
        if how == "max":
            weights = torch.zeros_like(p).scatter(2, p.argmax(dim=2, keepdim=True), 1.0)
        elif how == "topk":
            weights = torch.zeros_like(p).scatter(2, p.topk(self.settings.top_k, dim=2).indices, 1.0)
        else:
            weights = p
        return torch.einsum("bfh,fhd->bfd", weights, self.meta)
