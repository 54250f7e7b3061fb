"""AutoDim as a search method (trainer.search.interface.SearchMethod).

Decisions = one cluster, every field at the candidate dim of its largest α; α and
softmax(α) go to the details. The recipe retrains that mixed-dim model from scratch
(plain TorchRec tables, no linear maps or batch norm) and exports it.
Report rows: Base (the config's uniform dim), the search-stage network, a random-dims
baseline with (within a tolerance) the embedding bytes of AutoDim's choice, optional
uniform-dim baselines, iHAS-2 and the paper's BN scale, and AutoDim. α trains on architecture batches (`arch_split`: by default "gate", a share
of train that only α sees, so the validation split only picks epochs), the weights on the
training batches, alternating as the shared loop does (first-order DARTS).
Choices where the paper is vague:
  * s in τ = max(τ_min, start − s·decay) counts weight steps, as in AutoDPQ;
  * one Gumbel sample per field per batch, shared by its rows (`noise = "batch"`, as AutoDPQ;
    every torchrun rank then draws what a 1-process run draws) or one per row
    (`noise = "row"`); the "eval" phase uses argmax α, so validation during the search
    scores the architecture it would derive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from serving.features import FeatureSpec
from trainer.decisions import ClusterDecision, Decisions, uniform
from trainer.models.build import build_model
from trainer.models.ctr import CTRModel
from trainer.models.layout import layout_for
from trainer.search.autodim.supernet import DimSearchEmbeddings
from trainer.search.gumbel import GumbelClock, GumbelSchedule
from trainer.search.aim.method import AIM, AIMConfig
from trainer.search.ihas.method import IHAS, IHASConfig
from trainer.search.interface import SearchContext, Variant
from trainer.search.loop import SearchLoopConfig, run_search

# iHAS-2's search unless variants.ihas says otherwise: the iHAS paper's schedule (5 pretrain
# epochs, gates on architecture batches every step as configs/ihas_ml100k.toml does), its
# architecture batches from a gate split like AutoDim's
IHAS_DEFAULTS = {"pretrain_epochs": 5, "search_epochs": 10, "arch_every": 1, "arch_lr": 1e-2, "arch_split": "gate"}


@dataclass
class AutoDimConfig(SearchLoopConfig):
    """AutoDim settings (the paper's unless a config says otherwise). Inherits the alternating schedule.

    Args:
        method: "autodim".
        candidates: the candidate dims of every field (at least two, distinct).
        common_dim: width every candidate is mapped to before the batch norm (0 = the
            largest candidate, as in the paper).
        hard: straight-through Gumbel-softmax in the search (one-hot forward, soft
            backward) instead of the paper's soft mixture; a labelled variant.
        bn_scale: constant multiplying every candidate's BN output (1 = the paper; below 1
            a labelled variant that keeps FM-style heads in range, see supernet.py).
        bn_affine: the BN learns a per-coordinate scale and shift (γ = 1, β = 0 at the start;
            PyTorch's default BN) instead of the paper's plain standardisation; a labelled variant.
        noise: "batch" (one Gumbel draw per field per batch) or "row" (one per row).
        gumbel_start: τ at weight step 0.
        gumbel_decay: τ decrease per weight step.
        gumbel_min: lowest τ.
    """

    method: str = "autodim"
    pretrain_epochs: int = 0
    arch_split: str = "gate"
    candidates: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    common_dim: int = 0
    hard: bool = False
    bn_scale: float = 1.0
    bn_affine: bool = False
    noise: str = "batch"
    gumbel_start: float = 1.0
    gumbel_decay: float = 5e-5
    gumbel_min: float = 0.01

    @property
    def width(self) -> int:
        return self.common_dim or max(self.candidates)

    def validate(self) -> list[str]:
        p = super().validate()
        if len(self.candidates) < 2 or len(set(self.candidates)) != len(self.candidates) or min(self.candidates) < 1:
            p.append(f"search.candidates: need at least two distinct dims >= 1, got {self.candidates}")
        if self.common_dim < 0:
            p.append(f"search.common_dim: must be >= 0 (0 = the largest candidate), got {self.common_dim}")
        if self.noise not in ("batch", "row"):
            p.append(f"search.noise: must be 'batch' or 'row', got {self.noise!r}")
        if not self.bn_scale > 0:
            p.append(f"search.bn_scale: must be > 0, got {self.bn_scale}")
        if not (self.gumbel_min > 0 and self.gumbel_start >= self.gumbel_min and self.gumbel_decay >= 0):
            p.append("search.gumbel_*: need gumbel_start >= gumbel_min > 0 and gumbel_decay >= 0")
        return p


@dataclass
class AutoDimVariants:
    """Which rows an AutoDim run trains besides Base and AutoDim.

    Args:
        random: the random-dims baseline: per field a random candidate, drawn until the
            embedding bytes are within random_tolerance of AutoDim's (never AutoDim's own dims).
        random_draws: seeded draws the random baseline picks from (the closest if none is within).
        random_tolerance: relative bytes gap the random draw may have.
        uniform_dims: extra baselines with every field at one of these dims.
        paper_bn: also search and retrain with bn_scale = 1 (the paper's batch norm), when
            the config sets another scale.
        learned_bn: also search and retrain with a BN that learns its scale and shift
            (bn_scale = 1, bn_affine), when the config does not already.
        ihas_2: the iHAS-2 baseline: an iHAS search (one cluster, from every field at
            model.embedding_dim) and the dims its gates keep, retrained. The search runs
            inside `variants` and is not saved, so a resumed run searches again.
        ihas: iHAS settings (the [search] keys of an iHAS config) for that search; the
            defaults below put its gates on a gate split as well.
        aim_eds: the AIM-EDS baseline: an AIM search (every stage, including its embedding
            dimension search) from every field at model.embedding_dim, and the number of
            dims EDS keeps per field, retrained as plain mixed-dim tables (not AIM's model:
            the dims alone are compared). Not saved either.
        aim: AIM settings (the [search] keys of an AIM config) for that search.
    """

    random: bool = True
    random_draws: int = 2000
    random_tolerance: float = 0.05
    uniform_dims: list[int] = field(default_factory=list)
    paper_bn: bool = False
    learned_bn: bool = False
    ihas_2: bool = False
    ihas: dict = field(default_factory=dict)
    aim_eds: bool = False
    aim: dict = field(default_factory=dict)

    def aim_config(self) -> AIMConfig:
        return AIMConfig(**{**self.aim, "method": "aim", "eds": True})

    def ihas_config(self) -> IHASConfig:
        return IHASConfig(**{**IHAS_DEFAULTS, **self.ihas, "clusters": 1})

    def validate(self) -> list[str]:
        p = []
        if self.random_draws < 1:
            p.append(f"variants.random_draws: must be >= 1, got {self.random_draws}")
        if not 0 <= self.random_tolerance < 1:
            p.append(f"variants.random_tolerance: must be in [0, 1), got {self.random_tolerance}")
        if any(d < 1 for d in self.uniform_dims):
            p.append(f"variants.uniform_dims: dims must be >= 1, got {self.uniform_dims}")
        unknown = sorted(set(self.ihas) - {f.name for f in fields(IHASConfig)} - {"method", "clusters"})
        if unknown:
            p.append(f"variants.ihas: unknown iHAS keys {unknown}")
        else:
            p += [x.replace("search.", "variants.ihas.", 1) for x in self.ihas_config().validate()]
        unknown = sorted(set(self.aim) - {f.name for f in fields(AIMConfig)})
        if unknown:
            p.append(f"variants.aim: unknown AIM keys {unknown}")
        else:
            p += [x.replace("search.", "variants.aim.", 1) for x in self.aim_config().validate()]
        return p


def label(bn_scale: float, bn_affine: bool = False) -> str:
    """AutoDim's row name: says so when its BN is not the paper's."""
    changed = ([f"BN × {bn_scale:g}"] if bn_scale != 1.0 else []) + (["BN with learned γ, β"] if bn_affine else [])
    return f"AutoDim ({', '.join(changed)}, not the paper's)" if changed else "AutoDim"


def random_dims(spec: FeatureSpec, candidates: list[int], target: dict[str, int], draws: int, seed: int,
                tolerance: float) -> dict[str, int] | None:
    """Per field a uniformly random candidate dim, conditioned on the bytes: the first of `draws`
    seeded draws whose embedding bytes are within `tolerance` (relative) of `target`'s, or the
    closest draw if none is; never `target` itself (None if every draw is `target`).

    Taking the closest of many draws instead would hand back nearly `target` itself: the
    largest fields decide the bytes, so the closest draws copy their dims."""
    names = spec.names
    per_dim = np.array([[layout_for(spec, {n: d for n in names}).table(n).embedding_bytes for d in candidates] for n in names])
    goal = layout_for(spec, target).embedding_bytes
    picks = np.random.default_rng((seed, 31)).integers(len(candidates), size=(draws, len(names)))
    own = np.array([candidates.index(target[n]) for n in names])
    gap = np.abs(per_dim[np.arange(len(names)), picks].sum(axis=1) - goal) / goal
    gap[(picks == own).all(axis=1)] = np.inf
    inside = np.flatnonzero(gap <= tolerance)
    best = int(inside[0]) if len(inside) else int(np.argmin(gap))
    if not np.isfinite(gap[best]):
        return None
    return {n: candidates[i] for n, i in zip(names, picks[best])}


def ihas_one_cluster(ctx: SearchContext, cfg: IHASConfig) -> Decisions:
    """iHAS-2's decisions: an iHAS search with these settings, its gates' majority dims (one cluster)."""
    ihas = IHAS(cfg, ctx)
    torch.manual_seed(ctx.train.seed)
    run_search(ihas, ctx.ds, cfg, ctx.train, ctx.env, ctx.log)
    return ihas.derive(ctx, clusters=1).replace(method="ihas_2")


def aim_eds_dims(ctx: SearchContext, cfg: AIMConfig) -> Decisions:
    """AIM-EDS's decisions: every stage of an AIM search, then the dims its dimension search
    keeps per field as plain mixed-dim tables (one cluster)."""
    aim = AIM(cfg, ctx)
    torch.manual_seed(ctx.train.seed)
    loop = cfg
    while loop is not None:
        run_search(aim, ctx.ds, loop, ctx.train, ctx.env, ctx.log)
        loop = aim.next_stage(loop)
    dims = aim.derive(ctx).clusters[0].dims
    return uniform("aim_eds", ctx.spec.names, dims, ctx.train_rows)


class AutoDim:
    """The AutoDim search method.

    Args:
        cfg: AutoDim settings.
        ctx: the run's context (AutoDim trains its supernet from scratch; ctx.base is unused).
    """

    Config = AutoDimConfig
    Variants = AutoDimVariants

    def __init__(self, cfg: AutoDimConfig, ctx: SearchContext):
        self.cfg, self.spec, self.model_cfg = cfg, ctx.spec, ctx.model
        self.seed = ctx.train.seed
        self.train_rows = ctx.train_rows
        self.retrain_options: dict = {}
        self.supernet: CTRModel | None = None
        self.phase = "pretrain"

    @staticmethod
    def check_config(exp) -> list[str]:
        return []

    def build(self) -> CTRModel:
        clock = GumbelClock(GumbelSchedule(self.cfg.gumbel_start, self.cfg.gumbel_decay, self.cfg.gumbel_min), self.cfg.hard,
                            self.cfg.noise == "row")
        emb = DimSearchEmbeddings(self.spec, self.cfg.candidates, self.cfg.width, self.model_cfg.init_scale, clock,
                                  self.cfg.bn_scale, self.cfg.bn_affine)
        self.supernet = build_model(self.spec, self.model_cfg, embeddings=emb)
        return self.supernet

    @property
    def embeddings(self) -> DimSearchEmbeddings:
        return self.supernet.embeddings

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        return [self.embeddings.alpha]

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.embeddings.phase = phase

    def init_architecture(self) -> None:
        """α = 0: every candidate equally likely when the search starts."""
        with torch.no_grad():
            self.embeddings.alpha.zero_()

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        self.embeddings.clock.arch_steps += 1
        return bce

    def next_stage(self, loop: SearchLoopConfig) -> None:
        return None  # one search stage

    def derive(self, ctx: SearchContext) -> Decisions:
        """Per field argmax α → its dim (one cluster)."""
        emb, clock = self.embeddings, self.embeddings.clock
        alpha = emb.alpha.detach()
        details = {"candidates": list(self.cfg.candidates), "common_dim": self.cfg.width,
                   "gumbel_tau_final": clock.tau, "weight_steps": clock.weight_steps, "arch_steps": clock.arch_steps,
                   "alpha": {n: [round(float(a), 5) for a in alpha[i]] for i, n in enumerate(emb.fields)},
                   "probs": {n: [round(float(p), 5) for p in torch.softmax(alpha[i], 0)] for i, n in enumerate(emb.fields)}}
        return uniform("autodim", self.spec.names, emb.chosen(), self.train_rows).replace(details=details)

    def router(self, decisions: Decisions) -> None:
        return None

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: AutoDimVariants) -> list[Variant]:
        rows = [Variant("autodim_supernet", "AutoDim search stage", "supernet")]
        for d in wanted.uniform_dims:
            rows.append(Variant(f"uniform_{d}", f"Uniform dim {d}", "baseline",
                                (uniform(f"uniform_{d}", self.spec.names, {n: d for n in self.spec.names}, self.train_rows),)))
        chosen = decisions.clusters[0].dims
        if wanted.random:
            dims = random_dims(self.spec, self.cfg.candidates, chosen, wanted.random_draws, self.seed, wanted.random_tolerance)
            if dims is None:
                ctx.log("random dims: every draw equals AutoDim's choice; no random baseline")
            else:
                rows.append(Variant("random_dims", "Random dims (AutoDim's bytes)", "baseline",
                                    (uniform("random_dims", self.spec.names, dims, self.train_rows),)))
        if wanted.ihas_2:
            ctx.log("== iHAS search for the iHAS-2 baseline")
            rows.append(Variant("ihas_2", "iHAS-2 (one-cluster iHAS dims)", "baseline",
                                (ihas_one_cluster(ctx, wanted.ihas_config()),)))
        if wanted.aim_eds:
            ctx.log("== AIM search for the AIM-EDS dims baseline")
            rows.append(Variant("aim_eds", "AIM-EDS dims (AIM's dimension search)", "baseline",
                                (aim_eds_dims(ctx, wanted.aim_config()),)))
        if wanted.paper_bn and (self.cfg.bn_scale != 1.0 or self.cfg.bn_affine):
            rows.append(Variant("autodim_paper_bn", "AutoDim (the paper's BN)", "variant",
                                search={"bn_scale": 1.0, "bn_affine": False}))
        if wanted.learned_bn and not (self.cfg.bn_scale == 1.0 and self.cfg.bn_affine):
            rows.append(Variant("autodim_learned_bn", label(1.0, True), "variant", search={"bn_scale": 1.0, "bn_affine": True}))
        rows.append(Variant("autodim", label(self.cfg.bn_scale, self.cfg.bn_affine), "method", (decisions,)))
        return rows

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        raise ValueError(f"variant {variant.name}: AutoDim retrains from scratch; it has no warm start")

    def report(self, ctx: SearchContext, searched: dict[str, Decisions], out: Path | None) -> dict:
        main = searched["autodim"]
        return {"chosen_dims": main.clusters[0].dims, "probs": main.details["probs"],
                "gumbel_tau_final": main.details["gumbel_tau_final"]}
