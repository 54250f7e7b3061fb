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

Candidates are Compressions: the paper's (K, D) grid, and with the byte-aware search also
"full" (the raw rows kept), "others" (one shared row, initialised to the mean of the
field's low-frequency rows) and "int8" / "int4" (the raw rows read through their row-wise
integer form, trainer.models.rowwise). `offered[m, t]` says which candidates field m may take:
every one for the paper; with `prune`, only those that fit (K ≤ n_low) and store fewer
bytes than the raw rows, besides "full" itself. Each field's α is its own parameter, so
an architecture batch without any of field m's low-frequency ids (with `low_batches_only`)
leaves α_m out of the graph: its gradient stays None and the optimizer skips it, instead of
Adam turning a float residue (the candidates then differ only by their batch norms) into a
full-size step. `candidate_bytes[m, t]` is what the bundle would store for field m's table
with candidate t (FieldTable.embedding_bytes), for the expected-bytes term of α's loss.

Phases (set by the method): "pretrain" = the uncompressed model (raw rows used as they
are, no BN) — AutoDPQ's pretrain step when it runs inside the search loop; "search" =
the stochastic mixture; "eval" = the derived architecture, argmax α per field (its BN,
in running-statistics mode under model.eval()).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from trainer.models.dpq import CompressedEmbeddings, DPQCodebook, pool_rows
from trainer.models.layout import FULL, Compression, EmbeddingLayout, FieldTable
from trainer.models.rowwise import ROW_BITS, fake_quantize
from trainer.search.gumbel import GumbelClock, GumbelSchedule

PHASES = ("pretrain", "search", "eval")


def _split_alpha(state: dict, prefix: str, *_) -> None:
    """A supernet saved when α was one [F, T] parameter loads into the per-field α."""
    alpha = state.pop(f"{prefix}alpha", None)
    if alpha is not None:
        state.update({f"{prefix}alphas.{i}": row.clone() for i, row in enumerate(alpha)})


def candidate_bytes(t: FieldTable, c: Compression) -> int:
    """Bytes the bundle stores for field t's table if its low-frequency ids take c."""
    return replace(t, compression=c).embedding_bytes


def offered(t: FieldTable, c: Compression, prune: bool) -> bool:
    """Whether field t may take candidate c: every candidate for the paper; with `prune`
    only "full" and candidates that fit and store fewer bytes than the raw rows."""
    if c.kind == "dpq" and t.dim % c.d or c.kind in ROW_BITS and t.dim * ROW_BITS[c.kind] % 8:
        return False
    if not prune or c.kind == "full":
        return True
    if c.kind == "dpq" and c.k > t.n_low:
        return False
    return candidate_bytes(t, c) < candidate_bytes(t, FULL)


class SearchEmbeddings(CompressedEmbeddings):
    """CompressedEmbeddings whose dpq fields mix T candidates, each with its own BN, under α.

    Args:
        layout: the frequency split; every field with kind "dpq" is searched (its own
            compression is ignored), the others are used as they are.
        candidates: the T Compressions every searched field chooses from.
        init_scale: initial table range (before `init_from_full`).
        tau_kd: DPQ-SX temperature.
        schedule: Gumbel temperature per weight step.
        prune: offer a field only the candidates that fit and save bytes (see `offered`).
        low_batches_only: α_m learns only from architecture batches holding field m's
            low-frequency ids.
        sparse: raw rows with sparse gradients (ModelConfig.raw_rows = "sparse").
    """

    def __init__(self, layout: EmbeddingLayout, candidates: list[Compression], init_scale: float = 0.01,
                 tau_kd: float = 1e-4, schedule: GumbelSchedule | None = None, prune: bool = False,
                 low_batches_only: bool = False, sparse: bool = False):
        super().__init__(layout, init_scale, tau_kd, sparse=sparse)
        self.candidates = list(candidates)
        self.searched = [t.name for t in layout.tables if t.kind == "dpq"]
        self.low_batches_only = low_batches_only
        tables = [layout.table(n) for n in self.searched]
        self.codebooks = nn.ModuleDict({
            t.name: nn.ModuleList(DPQCodebook(c.k, c.d, t.dim, tau_kd) if c.kind == "dpq" and t.dim % c.d == 0
                                  else nn.Identity() for c in self.candidates)
            for t in tables
        })
        self.others = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(t.dim)) for t in tables}
                                       if any(c.kind == "others" for c in self.candidates) else {})
        self.bns = nn.ModuleDict({
            t.name: nn.ModuleList(nn.BatchNorm1d(t.dim, affine=False) for _ in self.candidates) for t in tables
        })
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(self.candidates))) for _ in tables)
        self.register_buffer("offered", torch.tensor([[offered(t, c, prune) for c in self.candidates] for t in tables],
                                                     dtype=torch.bool).reshape(len(tables), len(self.candidates)),
                             persistent=False)  # both derived from the layout: not part of a saved supernet
        self.register_buffer("candidate_bytes", torch.tensor(
            [[float(candidate_bytes(t, c)) if offered(t, c, prune) else 0.0 for c in self.candidates] for t in tables]
        ).reshape(len(tables), len(self.candidates)), persistent=False)
        if not bool(self.offered.any(dim=1).all()):
            raise ValueError("a searched field is offered no candidate")
        for name in self.searched:  # BN output → field scale (identity until set_target_moments)
            self.register_buffer(f"target_mean_{name}", torch.zeros(layout.table(name).dim))
            self.register_buffer(f"target_std_{name}", torch.ones(layout.table(name).dim))
        self.clock = GumbelClock(schedule)
        self.phase = "pretrain"
        self.present: set[int] = set()  # searched fields whose α the last stochastic forward used
        self._register_load_state_dict_pre_hook(_split_alpha)

    @property
    def alpha(self) -> torch.Tensor:
        """[F, T] α of every searched field (a copy; set values through `alphas`)."""
        return torch.stack([a.detach() for a in self.alphas]) if len(self.alphas) else torch.zeros(0, len(self.candidates))

    def logits(self, i: int) -> torch.Tensor:
        """α of searched field i with the candidates it is not offered at -inf."""
        return self.alphas[i].masked_fill(~self.offered[i], float("-inf"))

    def expected_bytes(self) -> torch.Tensor:
        """Σ over the fields the last stochastic forward used of E_softmax(α)[candidate bytes]."""
        if not self.present:
            return torch.zeros(())
        return sum((torch.softmax(self.logits(i), 0) * self.candidate_bytes[i]).sum() for i in sorted(self.present))

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        """dpq candidates' centroids drawn from the raw rows; the "others" rows = their mean."""
        gen = torch.Generator().manual_seed(seed)
        for name, books in self.codebooks.items():
            for book in books:
                if isinstance(book, DPQCodebook):
                    book.init_from(self.raw[name].weight, gen)
        for name, row in self.others.items():
            row.copy_(self.raw[name].weight.mean(0))

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
        """argmax α per searched field, among the candidates it is offered."""
        return {name: self.candidates[int(self.logits(i).argmax())] for i, name in enumerate(self.searched)}

    def _stochastic(self) -> bool:
        """Whether this forward draws the Gumbel-softmax mixture (search-phase training)."""
        return self.phase == "search" and self.training and torch.is_grad_enabled()

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r} is not one of {PHASES}")
        if self._stochastic():
            self.clock.tick()
        self.present = set()
        return super().forward(sparse)

    def _candidate(self, t: FieldTable, j: int, raw: torch.Tensor) -> torch.Tensor:
        """Candidate j's version of field t's low-frequency rows `raw` [m, X]."""
        c = self.candidates[j]
        if c.kind == "full":
            return raw
        if c.kind == "others":
            return self.others[t.name].expand_as(raw)
        if c.kind in ROW_BITS:
            return fake_quantize(raw, c.kind)
        return self.codebooks[t.name][j](raw)

    def _field(self, t: FieldTable, e: torch.Tensor, jt) -> torch.Tensor:
        if t.kind != "dpq":
            return self._finish(t, e, jt)
        rows, raw = self.low_rows(t, jt)
        batch = jt.lengths().numel()
        if self.phase == "pretrain":
            return self._finish(t, e + pool_rows(rows, raw, batch), jt)
        i = self.searched.index(t.name)
        bns = self.bns[t.name]

        def out(j: int) -> torch.Tensor:
            return self._normed(t.name, bns[j], self._finish(t, e + pool_rows(rows, self._candidate(t, j, raw), batch), jt))

        if self._stochastic() and not (self.low_batches_only and raw.shape[0] == 0):
            self.present.add(i)
            p = nn.functional.gumbel_softmax(self.logits(i), tau=self.clock.tau, hard=False)
            return sum(p[j] * out(j) for j in range(len(self.candidates)) if self.offered[i, j])
        return out(int(self.logits(i).argmax()))
