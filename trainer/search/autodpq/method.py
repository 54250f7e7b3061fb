"""AutoDPQ as a search method (trainer.search.interface.SearchMethod).

Decisions = per field its storage: full, or the frequency split (n_full frequent ids)
with the chosen (K, D) for the low-frequency ids; α and softmax(α) go to the details.
Report rows: Base (= FE, the uncompressed model AutoDPQ starts from), the search-stage
network, Others, Grid, Random and AutoDPQ, every compressed model started from FE.
Choices where the paper is vague:
  * the pretrain step is the FE model the recipe trains first (its early-stopped best
    epoch); the supernet copies its head and tables, and each candidate's centroids are
    K raw rows drawn per sub-space. With `pretrain_epochs` > 0 the loop instead
    pretrains the supernet uncompressed and the centroids are drawn afterwards.
  * s in τ = max(0.01, 1 − s·5e-5) counts weight steps (the paper writes "epochs",
    which would leave τ ≈ 1 for any practical run).
  * one Gumbel sample per field per batch (shared by the batch's rows); the "eval" phase
    uses argmax α, so validation during the search scores the architecture it would derive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.decisions import ClusterDecision, Decisions, Storage, uniform
from trainer.models.build import build_model
from trainer.models.ctr import CTRModel
from trainer.models.dpq import TAU_KD
from trainer.models.layout import FULL, OTHERS, Compression, EmbeddingLayout, dpq, plan_layout
from trainer.search.autodpq.supernet import SearchEmbeddings
from trainer.search.gumbel import GumbelSchedule
from trainer.search.interface import SearchContext, Variant
from trainer.search.loop import SearchLoopConfig

BASELINES = ("others", "grid", "random")


@dataclass
class AutoDPQConfig(SearchLoopConfig):
    """AutoDPQ settings (paper defaults unless a config says otherwise). Inherits the alternating schedule.

    Args:
        method: "autodpq".
        threshold: ids with train count < threshold are low-frequency (coded); id 0 (OOV) never is.
        ks: candidate K (centroids per sub-space).
        ds: candidate D (sub-spaces; each must divide the embedding dim). The T candidates
            of every field are ks × ds.
        tau_kd: DPQ-SX softmax temperature τ_KD.
        gumbel_start: τ at weight step 0.
        gumbel_decay: τ decrease per weight step.
        gumbel_min: lowest τ.
        bn_restore: map each candidate's BN output back to the field's pretrained per-dim
            mean/std (constants shared by the field's candidates; see supernet.py); false =
            the paper's eq. (2) exactly (zero mean, unit variance).
        byte_aware: the byte-aware search (not the paper's): every field may also keep its
            raw rows ("full"), share one row ("others") or store int8 / int4 rows; it is
            offered only candidates that fit (K <= its low-frequency ids) and store fewer
            bytes than its raw rows, and its α learns only from architecture batches
            holding its low-frequency ids.
        size_weight: λ in α's loss = BCE + λ · E_α[stored bytes] / (Base's embedding
            bytes): λ nats of BCE are worth the whole uncompressed table set (0 = the paper).
    """

    method: str = "autodpq"
    pretrain_epochs: int = 0
    threshold: int = 20
    ks: list[int] = field(default_factory=lambda: [8, 16, 32])
    ds: list[int] = field(default_factory=lambda: [2, 4, 8])
    tau_kd: float = TAU_KD
    gumbel_start: float = 1.0
    gumbel_decay: float = 5e-5
    gumbel_min: float = 0.01
    bn_restore: bool = True
    byte_aware: bool = False
    size_weight: float = 0.0

    @property
    def candidates(self) -> list[tuple[int, int]]:
        return [(k, d) for k in self.ks for d in self.ds]

    def validate(self) -> list[str]:
        p = super().validate()
        if self.threshold < 1:
            p.append(f"search.threshold: must be >= 1, got {self.threshold}")
        if not self.ks or any(k < 1 for k in self.ks):
            p.append(f"search.ks: need K >= 1, got {self.ks}")
        if not self.ds or any(d < 1 for d in self.ds):
            p.append(f"search.ds: need D >= 1, got {self.ds}")
        if not self.size_weight >= 0:
            p.append(f"search.size_weight: must be >= 0, got {self.size_weight}")
        if not self.tau_kd > 0:
            p.append(f"search.tau_kd: must be > 0, got {self.tau_kd}")
        if not (self.gumbel_min > 0 and self.gumbel_start >= self.gumbel_min and self.gumbel_decay >= 0):
            p.append("search.gumbel_*: need gumbel_start >= gumbel_min > 0 and gumbel_decay >= 0")
        return p


@dataclass
class AutoDPQVariants:
    """Which baselines an AutoDPQ run trains besides FE (Base) and AutoDPQ.

    Args:
        baselines: "others" (low-frequency ids of a field share one row), "grid" (one
            global (K, D), best on validation), "random" (random (K, D) per field).
        random_trials: draws of the Random baseline (the best on validation is kept).
        size_weights: one byte-aware AutoDPQ row per λ (`search.byte_aware` with
            `search.size_weight` = λ; each runs its own search; not the paper's).
    """

    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    random_trials: int = 1
    size_weights: list[float] = field(default_factory=list)

    def validate(self) -> list[str]:
        p = []
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            p.append(f"variants.baselines: {unknown} not in {list(BASELINES)}")
        if self.random_trials < 1:
            p.append(f"variants.random_trials: must be >= 1, got {self.random_trials}")
        if any(not w >= 0 for w in self.size_weights):
            p.append(f"variants.size_weights: each must be >= 0, got {self.size_weights}")
        return p


def load_pretrained(model: CTRModel, pretrained: CTRModel, seed: int) -> None:
    """Copy an uncompressed model's head and tables into a compressed (or search) model; a
    first-order weight the low-frequency ids share starts at the mean of theirs."""
    head = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("embeddings.")}
    for f, n_full in (model.linear.shared if model.linear is not None else {}).items():
        key = f"linear.ebc.embedding_bags.w_{f}.weight"
        head[key] = torch.cat([head[key][:n_full], head[key][n_full:].mean(0, keepdim=True)])
    missing, unexpected = model.load_state_dict(head, strict=False)
    if unexpected or any(not k.startswith("embeddings.") for k in missing):
        raise ValueError(f"pretrained model does not match: missing {missing}, unexpected {unexpected}")
    model.embeddings.init_from_full(pretrained.embeddings, seed)


class AutoDPQ:
    """The AutoDPQ search method.

    Args:
        cfg: AutoDPQ settings.
        ctx: the run's context; ctx.base is the trained FE model every compressed model starts from.
    """

    Config = AutoDPQConfig
    Variants = AutoDPQVariants

    def __init__(self, cfg: AutoDPQConfig, ctx: SearchContext):
        self.cfg = cfg
        self.spec = ctx.spec
        self.model_cfg = ctx.model
        self.seed = ctx.train.seed
        self.pretrained = ctx.base
        self.counts = ctx.counts
        self.train_rows = ctx.train_rows
        self.split = plan_layout(ctx.spec, ctx.counts, ctx.model.field_dims(ctx.spec), cfg.threshold)
        self.searched = [t.name for t in self.split.tables if t.n_low > 0]
        self.retrain_options = {"tau_kd": cfg.tau_kd}
        grid = [dpq(k, d) for k, d in cfg.candidates]
        self.candidates = [FULL, OTHERS, Compression("int8"), Compression("int4"), *grid] if cfg.byte_aware else grid
        self.full_bytes = self.split.embedding_bytes  # Base's tables: every id a full row
        self.supernet: CTRModel | None = None
        self.phase = "pretrain"

    @staticmethod
    def check_config(exp) -> list[str]:
        p = []
        if exp.model.first_order_column:
            p.append("model.first_order_column: must be false with AutoDPQ (compressed tables have no column for "
                     "the first-order weights)")
        if exp.data.source == "synthetic" and exp.data.min_count < 2:
            p.append("data.min_count: must be >= 2 with AutoDPQ on synthetic data (its pre-coded ids are not in "
                     "train-count order, so the low-frequency ids would not be a suffix)")
        dims = sorted({exp.model.embedding_dim, *(d for d in exp.model.dims.values() if d > 0)})
        bad = [(dim, d) for dim in dims for d in exp.search.ds if dim % d]
        if bad:
            p.append(f"search.ds: every D must divide every field's dim; {', '.join(f'D={d} vs dim {x}' for x, d in bad)}")
        return p

    def layout(self, choices: dict[str, Compression]) -> EmbeddingLayout:
        return self.split.with_compression(choices)

    def build(self) -> CTRModel:
        first = dpq(*self.cfg.candidates[0])
        layout = self.layout({name: first for name in self.searched})
        model = build_model(self.spec, self.model_cfg, dims={n: 0 for n in self.spec.names} | dict(zip(layout.fields, layout.dims)))
        schedule = GumbelSchedule(self.cfg.gumbel_start, self.cfg.gumbel_decay, self.cfg.gumbel_min)
        model.embeddings = SearchEmbeddings(layout, self.candidates, self.model_cfg.init_scale, self.cfg.tau_kd, schedule,
                                            prune=self.cfg.byte_aware, low_batches_only=self.cfg.byte_aware,
                                            sparse=self.model_cfg.raw_rows == "sparse")
        if self.pretrained is not None:
            load_pretrained(model, self.pretrained, self.seed)
        self.supernet = model
        return model

    @property
    def embeddings(self) -> SearchEmbeddings:
        return self.supernet.embeddings

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.embeddings.alphas)

    def search_parameters(self) -> list[torch.nn.Parameter]:
        """What a holdout search trains besides α: every candidate's centroids and the shared rows."""
        return [*self.embeddings.codebooks.parameters(), *self.embeddings.others.parameters()]

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.embeddings.phase = phase

    def init_architecture(self) -> None:
        """α = 0 (uniform) and centroids drawn from the (pre)trained raw rows."""
        with torch.no_grad():
            for a in self.embeddings.alphas:
                a.zero_()
        self.embeddings.init_codebooks(self.seed)
        if self.cfg.bn_restore:
            self.embeddings.set_target_moments(self.counts)

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        """BCE, plus λ · the expected stored bytes (relative to Base's tables) of the fields
        the batch's forward mixed (with `low_batches_only`, those holding low-frequency ids)."""
        self.embeddings.clock.arch_steps += 1
        if not self.cfg.size_weight:
            return bce
        return bce + self.cfg.size_weight * self.embeddings.expected_bytes() / self.full_bytes

    def decisions(self, name: str, choices: dict[str, Compression]) -> Decisions:
        """One cluster: the named fields' low-frequency ids stored as chosen, the rest full."""
        layout = self.layout(choices)
        storage = {t.name: Storage(t.kind, t.n_full, t.compression.k, t.compression.d) for t in layout.tables if t.kind != "full"}
        dims = {n: 0 for n in self.spec.names} | dict(zip(layout.fields, layout.dims))
        return uniform(name, self.spec.names, dims, self.train_rows, storage)

    def next_stage(self, loop: SearchLoopConfig) -> None:
        return None  # one search stage

    def derive(self, ctx: SearchContext) -> Decisions:
        """Per field argmax α → (K, D)."""
        emb = self.embeddings
        alpha = emb.alpha.detach()
        chosen = emb.chosen()
        details = {"threshold": self.cfg.threshold, "candidates": [c.to_json() for c in emb.candidates],
                   "offered": {n: emb.offered[i].tolist() for i, n in enumerate(emb.searched)},
                   "size_weight": self.cfg.size_weight,
                   "gumbel_tau_final": emb.clock.tau, "weight_steps": emb.clock.weight_steps,
                   "arch_steps": emb.clock.arch_steps,
                   "alpha": {n: [round(float(a), 5) for a in alpha[i]] for i, n in enumerate(emb.searched)},
                   "probs": {n: [round(float(p), 5) for p in torch.softmax(emb.logits(i).detach(), 0)] for i, n in enumerate(emb.searched)}}
        return self.decisions("autodpq", chosen).replace(details=details)

    def router(self, decisions: Decisions) -> None:
        return None

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: AutoDPQVariants) -> list[Variant]:
        coded = self.searched
        rows = [Variant("autodpq_supernet", "AutoDPQ search stage", "supernet")]
        if "others" in wanted.baselines:
            rows.append(Variant("others", "Others", "baseline", (self.decisions("others", {n: OTHERS for n in coded}),), init="method"))
        if "grid" in wanted.baselines:
            grid = tuple(self.decisions(f"k{k}_d{d}", {n: dpq(k, d) for n in coded}) for k, d in self.cfg.candidates)
            rows.append(Variant("grid", "Grid", "baseline", grid, init="method"))
        if "random" in wanted.baselines:
            rng = np.random.default_rng((self.seed, 17))
            trials = []
            for trial in range(wanted.random_trials):
                picks = rng.integers(len(self.cfg.candidates), size=len(coded))
                trials.append(self.decisions(f"trial_{trial}", {n: dpq(*self.cfg.candidates[i]) for n, i in zip(coded, picks)}))
            rows.append(Variant("random", "Random", "baseline", tuple(trials), init="method"))
        rows += [Variant(f"autodpq_bytes_{w:g}", f"AutoDPQ, byte-aware, λ = {w:g} (not the paper's)", "variant",
                         search={"byte_aware": True, "size_weight": w}, init="method") for w in wanted.size_weights]
        rows.append(Variant("autodpq", "AutoDPQ", "method", (decisions,), init="method"))
        return rows

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        """FE's weights; under the holdout schedule only the codebooks stay trainable (a fresh
        optimizer over every weight of a one-pass model costs more than it learns from the
        gate rows)."""
        load_pretrained(model, self.pretrained, self.seed)
        if self.cfg.holdout:
            model.requires_grad_(False)
            model.embeddings.codebooks.requires_grad_(True)

    def report(self, ctx: SearchContext, searched: dict[str, Decisions], out: Path | None) -> dict:
        split = self.split.tables
        chosen = searched["autodpq"].clusters[0].fields
        return {
            "threshold": self.cfg.threshold,
            "split": {t.name: {"n_full": t.n_full, "n_low": t.n_low, "num_embeddings": t.num_embeddings} for t in split},
            "coded_share_of_ids": sum(t.n_low for t in split) / sum(t.num_embeddings for t in split),
            "chosen": {n: [f.storage.k, f.storage.d] for n, f in chosen.items() if f.storage.kind == "dpq"},
            "storage_by_row": {row: {n: f.storage.kind if f.storage.kind != "dpq" else f"dpq K={f.storage.k} D={f.storage.d}"
                                     for n, f in dec.clusters[0].fields.items() if n in self.searched}
                               for row, dec in searched.items()},
        }
