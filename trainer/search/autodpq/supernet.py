"""The AutoDPQ search-stage embeddings: every searched field mixes T DPQ candidates.

Per field m with low-frequency ids, candidate t = (K_t, D_t) quantizes the field's raw
low-frequency rows with its own codebook; the candidate's pooled field embedding
ê_m^t (frequent rows + quantized rare rows, bag-mean as usual) is batch-normalised
without affine parameters (ẽ = (ê − μ) / sqrt(σ² + ε), paper eq. 2) and the field's
output is Σ_t p_m^t ẽ_m^t (eq. 3), p_m = Gumbel-softmax(α_m, τ) with
τ = max(τ_min, 1 − s·decay), s = weight steps taken so far in the search phase.
Fields without low-frequency ids have nothing to search and pass through unchanged.

BN output scale: eq. (2) makes every candidate zero-mean, unit-variance per dim, which
unifies the candidates' magnitudes but also hands the pretrained head embeddings 4–9×
larger than it was trained on (ML-100K DeepFM: pretrained per-dim std 0.11–0.24; the FM
inner products then explode: the training loss went from 0.47 to 1.24 and the supernet's
validation AUC from 0.79 to 0.74–0.75 in the first search epochs). With `restore` (the default of AutoDPQConfig.bn_restore), each BN output is mapped
back to the field's pretrained per-dim mean and std — constants computed once from the
uncompressed rows weighted by their train counts, the same for every candidate of the
field — so the candidates are still compared at one magnitude, the pretrained one.

Phases (set by the method): "pretrain" = the uncompressed model (raw rows used as they
are, no BN) — AutoDPQ's pretrain step when it runs inside the search loop; "search" =
the stochastic mixture; "eval" = the derived architecture, argmax α per field (its BN,
in running-statistics mode under model.eval()).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from trainer.models.dpq import CompressedEmbeddings, DPQCodebook, pool_rows
from trainer.models.layout import Compression, EmbeddingLayout, FieldTable
from trainer.search.gumbel import GumbelClock, GumbelSchedule

PHASES = ("pretrain", "search", "eval")


class SearchEmbeddings(CompressedEmbeddings):
    """CompressedEmbeddings whose dpq fields hold T candidate codebooks, T BNs and α.

    Args:
        layout: the frequency split; every field with kind "dpq" is searched (its own
            compression is ignored), the others are used as they are.
        candidates: the T (K, D) pairs every searched field chooses from.
        init_scale: initial table range (before `init_from_full`).
        tau_kd: DPQ-SX temperature.
        schedule: Gumbel temperature per weight step.
    """

    def __init__(self, layout: EmbeddingLayout, candidates: list[tuple[int, int]], init_scale: float = 0.01,
                 tau_kd: float = 1e-4, schedule: GumbelSchedule | None = None):
        super().__init__(layout, init_scale, tau_kd)
        self.candidates = [tuple(c) for c in candidates]
        self.searched = [t.name for t in layout.tables if t.kind == "dpq"]
        self.codebooks = nn.ModuleDict({
            name: nn.ModuleList(DPQCodebook(k, d, layout.table(name).dim, tau_kd) for k, d in self.candidates)
            for name in self.searched
        })
        self.bns = nn.ModuleDict({
            name: nn.ModuleList(nn.BatchNorm1d(layout.table(name).dim, affine=False) for _ in self.candidates)
            for name in self.searched
        })
        self.alpha = nn.Parameter(torch.zeros(len(self.searched), len(self.candidates)))
        for name in self.searched:  # BN output → field scale (identity until set_target_moments)
            self.register_buffer(f"target_mean_{name}", torch.zeros(layout.table(name).dim))
            self.register_buffer(f"target_std_{name}", torch.ones(layout.table(name).dim))
        self.clock = GumbelClock(schedule)
        self.phase = "pretrain"

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, books in self.codebooks.items():
            for book in books:
                book.init_from(self.raw[name].weight, gen)

    @torch.no_grad()
    def set_target_moments(self, counts: dict) -> None:
        """Per searched field, the train-count-weighted mean and std (per dim) of its current
        uncompressed rows (frequent table rows + raw rare rows): what BN outputs are mapped to."""
        for name in self.searched:
            t = self.layout.table(name)
            rows = torch.cat([self.ebc.embedding_bags[f"t_{name}"].weight[: t.n_full, : t.dim], self.raw[name].weight])
            w = torch.tensor(np.asarray(counts[name], dtype=np.float32))
            w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1 / len(w))
            mean = (w[:, None] * rows).sum(0)
            std = ((w[:, None] * (rows - mean) ** 2).sum(0)).sqrt()
            getattr(self, f"target_mean_{name}").copy_(mean)
            getattr(self, f"target_std_{name}").copy_(std)

    def _normed(self, name: str, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return bn(x) * getattr(self, f"target_std_{name}") + getattr(self, f"target_mean_{name}")

    def chosen(self) -> dict[str, Compression]:
        """argmax α per searched field."""
        best = self.alpha.argmax(dim=1).tolist()
        return {name: Compression("dpq", *self.candidates[i]) for name, i in zip(self.searched, best)}

    def _stochastic(self) -> bool:
        """Whether this forward draws the Gumbel-softmax mixture (search-phase training)."""
        return self.phase == "search" and self.training and torch.is_grad_enabled()

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r} is not one of {PHASES}")
        if self._stochastic():
            self.clock.tick()
        return super().forward(sparse)

    def _field(self, t: FieldTable, e: torch.Tensor, jt) -> torch.Tensor:
        if t.kind != "dpq":
            return self._finish(t, e, jt)
        rows, raw = self.low_rows(t, jt)
        batch = jt.lengths().numel()
        if self.phase == "pretrain":
            return self._finish(t, e + pool_rows(rows, raw, batch), jt)
        i = self.searched.index(t.name)
        books, bns = self.codebooks[t.name], self.bns[t.name]
        if self._stochastic():
            p = nn.functional.gumbel_softmax(self.alpha[i], tau=self.clock.tau, hard=False)
            terms = [self._normed(t.name, bn, self._finish(t, e + pool_rows(rows, book(raw), batch), jt)) for book, bn in zip(books, bns)]
            return sum(w * x for w, x in zip(p, terms))
        c = int(self.alpha[i].argmax())
        return self._normed(t.name, bns[c], self._finish(t, e + pool_rows(rows, books[c](raw), batch), jt))
