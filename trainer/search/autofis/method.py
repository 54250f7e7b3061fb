"""AutoFIS as a search method (trainer.search.interface.SearchMethod).

Search: the base model (FM, DeepFM or IPNN) with every second-order interaction gated by
α and normalised by an affine-free batch norm (supernet.py); α and the weights learn
together on training batches (one level), α by GRDA so unimportant interactions reach
exactly zero, the weights by Adam. Decisions = the pairs with α ≠ 0, each with its α.
Retrain (the AutoFIS paper's): the base model restricted to the kept pairs, from scratch,
with each pair's α kept as a learned weight on its interaction (an attention unit,
trained by Adam with the rest), no batch norm; the bundle's model computes only those
pairs. Report rows: Base (every pair), the search-stage network, a random set of as many
pairs (a baseline), AutoFIS, and AutoFIS retrained without α (the plain pruned base
model, a labelled variant: whether keeping α is what pays).
Choices where the papers are vague: α starts at `alpha_init` for every pair; the search
keeps the state of its best validation epoch, and a gate closed at that point stays closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.decisions import ClusterDecision, Decisions, Interaction, uniform
from trainer.models.build import build_model
from trainer.models.ctr import CTRModel
from trainer.search.autofis.supernet import FIS_MODELS, FISNetwork
from trainer.search.interface import SearchContext, Variant
from trainer.search.loop import SearchLoopConfig
from trainer.search.planted import planted_scores


@dataclass
class AutoFISConfig(SearchLoopConfig):
    """AutoFIS settings. Inherits the search schedule; the defaults are the paper's
    one-level GRDA search (Criteo's c and μ).

    Args:
        method: "autofis".
        alpha_init: every gate's starting value.
        centred: pair terms between embeddings centred on their field's mean (supernet.py;
            a labelled variant, not the paper's).
    """

    method: str = "autofis"
    pretrain_epochs: int = 0
    arch_every: int = 1
    arch_split: str = "train"
    arch_optimizer: str = "grda"
    arch_lr: float = 0.01
    alpha_init: float = 0.05
    centred: bool = False

    def validate(self) -> list[str]:
        p = super().validate()
        if self.alpha_init == 0:
            p.append("search.alpha_init: must not be 0 (every gate would start closed)")
        return p


@dataclass
class AutoFISVariants:
    """Extra AutoFIS rows.

    Args:
        random: train a random set of as many pairs as AutoFIS keeps (seeded), the
            baseline that says whether the search picked better pairs than chance.
        gate_split: AutoFIS with α learning on a split carved from train instead of the
            training batches the weights fit (a labelled variant, not the paper's).
        plain_retrain: AutoFIS's pairs retrained without their α (the pruned base model
            alone; a labelled variant, not the paper's).
        centred: AutoFIS searched with pair terms orthogonal to the fields' main effects
            (`search.centred`) and α on a gate split (a labelled variant, not the paper's:
            with neither main effects nor the training rows' noise to fit, a noise pair's α
            has nothing to grow on and GRDA closes it).
    """

    random: bool = True
    gate_split: bool = False
    plain_retrain: bool = True
    centred: bool = False

    def validate(self) -> list[str]:
        return []


class AutoFIS:
    """The AutoFIS search method.

    Args:
        cfg: AutoFIS settings.
        ctx: the run's context.
    """

    Config = AutoFISConfig
    Variants = AutoFISVariants
    retrain_options: dict = {}

    def __init__(self, cfg: AutoFISConfig, ctx: SearchContext):
        self.cfg = cfg
        self.spec = ctx.spec
        self.model_cfg = ctx.model
        self.seed = ctx.train.seed
        self.planted = (getattr(ctx.ds, "meta", None) or {}).get("planted")
        self.supernet: FISNetwork | None = None
        self.phase = "pretrain"

    @staticmethod
    def check_config(exp) -> list[str]:
        if exp.model.name not in FIS_MODELS:
            return [f"model.name: AutoFIS searches the interactions of {sorted(FIS_MODELS)}, got {exp.model.name!r}"]
        return []

    def build(self) -> FISNetwork:
        base = build_model(self.spec, self.model_cfg)
        n = base.n_fields
        pairs = torch.triu_indices(n, n, offset=1)
        self.fields = list(base.embeddings.layout.fields)
        self.supernet = FISNetwork(base, pairs, self.cfg.alpha_init, self.cfg.centred)
        return self.supernet

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        return [self.supernet.alpha]

    def set_phase(self, phase: str) -> None:
        self.phase = phase  # the gates act the same in every phase: α itself is the architecture

    def init_architecture(self) -> None:
        with torch.no_grad():
            self.supernet.alpha.fill_(self.cfg.alpha_init)

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        return bce

    def pair_names(self) -> list[tuple[str, str]]:
        i, j = self.supernet.pairs
        return [(self.fields[a], self.fields[b]) for a, b in zip(i.tolist(), j.tolist())]

    def with_pairs(self, name: str, ctx: SearchContext, pairs: list[tuple[str, str]], details: dict | None = None,
                   weights: list[float] | None = None) -> Decisions:
        """Decisions keeping `pairs` (each with its retrain weight if `weights` is given)."""
        dims = self.model_cfg.field_dims(ctx.spec)
        d = uniform(name, ctx.spec.names, dims, ctx.train_rows)
        kept = tuple(Interaction(p, weight=None if weights is None else w) for p, w in zip(pairs, weights or [None] * len(pairs)))
        return d.replace(interactions=kept, details=details or {})

    def next_stage(self, loop: SearchLoopConfig) -> None:
        return None  # one search stage

    def derive(self, ctx: SearchContext) -> Decisions:
        alpha = self.supernet.alpha.detach()
        names = self.pair_names()
        kept = [(p, a) for p, a in zip(names, alpha.tolist()) if a != 0.0]
        details = {"searched": len(names), "kept": len(kept), "share_kept": len(kept) / max(len(names), 1),
                   "alpha": {f"{a}*{b}": round(float(x), 6) for (a, b), x in zip(names, alpha.tolist())}}
        if self.planted:
            details["planted"] = planted_scores([p for p, _ in kept], self.planted.get("interactions", []))
        return self.with_pairs("autofis", ctx, [p for p, _ in kept], details, weights=[a for _, a in kept])

    def router(self, decisions: Decisions) -> None:
        return None

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: AutoFISVariants) -> list[Variant]:
        rows = [Variant("autofis_supernet", "AutoFIS search stage", "supernet")]
        if wanted.random:
            names = self.pair_names()
            picks = np.random.default_rng((self.seed, 31)).choice(len(names), size=len(decisions.interactions), replace=False)
            rand = self.with_pairs("random_pairs", ctx, [names[i] for i in sorted(picks)])
            rows.append(Variant("random_pairs", "Random pairs (as many as AutoFIS keeps)", "baseline", (rand,)))
        if wanted.gate_split:
            rows.append(Variant("autofis_gate_split", "AutoFIS, α on a gate split (not the paper's)", "variant",
                                search={"arch_split": "gate"}))
        if wanted.centred:
            rows.append(Variant("autofis_centred", "AutoFIS, centred pair terms, α on a gate split (not the paper's)",
                                "variant", search={"centred": True, "arch_split": "gate"}))
        if wanted.plain_retrain:
            plain = decisions.replace(method="autofis_plain", interactions=tuple(Interaction(i.fields) for i in decisions.interactions))
            rows.append(Variant("autofis_plain", "AutoFIS pairs retrained without α (not the paper's)", "variant", (plain,)))
        rows.append(Variant("autofis", "AutoFIS", "method", (decisions,)))
        return rows

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        raise AssertionError("AutoFIS variants retrain from scratch")

    def report(self, ctx: SearchContext, searched: dict[str, Decisions], out: Path | None) -> dict:
        d = searched["autofis"].details
        entry = {"interactions": {k: d[k] for k in ("searched", "kept", "share_kept")}}
        if "planted" in d:
            entry["planted"] = d["planted"]
            entry["planted_by_row"] = {k: v.details["planted"] for k, v in searched.items() if "planted" in v.details}
        return entry
