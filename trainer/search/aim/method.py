"""AIM as a search method (trainer.search.interface.SearchMethod), in stages.

  1. Search interaction-IF, one stage per order p = 2..max_order: the candidates of order
     2 are every field pair; of order p > 2 the Cartesian product of the top-k tuples of
     order p − 1 (by their largest |α| over functions) with the fields, without repeated
     fields or duplicates (Algorithm 1: O(n·k) candidates instead of C(n, p)). Every
     (candidate, function) pair is gated by its α after an affine-free batch norm (FIS and
     IFS trained together); interactions kept by earlier orders stay in the model ungated.
     Kept = α ≠ 0 (GRDA gives exact zeros).
  2. Search embed (EDS): the model with the kept interaction-IF pairs, every field's
     embedding scaled by β_i ∈ ℝ^D; GRDA zeroes dims; a field keeps its non-zero dims.
  3. Retrain (the recipe): trainer.models.aim.AIMModel with the kept interaction-IF pairs
     and the kept dims at their positions, from scratch, Adam only.
Search stages train α / β with GRDA and the weights with Adam on training batches (one level).
Report rows: Base, AIM, and on request the paper's ablations (AIM-IFS-EDS: FIS only, the
base model's inner products, no dimension search; AIM-EDS: FIS + IFS, no dimension
search) and shared vs function-wise embeddings; each ablation runs its own search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from trainer.decisions import ClusterDecision, Decisions, FieldDecision, Interaction, uniform
from trainer.models.aim import AIM_BASES, FUNCTIONS, AIMModel
from trainer.models.ctr import CTRModel
from trainer.search.interface import SearchContext, Variant
from trainer.search.loop import SearchLoopConfig
from trainer.search.planted import planted_scores
from trainer.training import TrainingError

Term = tuple[tuple[str, ...], str]  # (field names, function)


@dataclass
class AIMConfig(SearchLoopConfig):
    """AIM settings. Inherits the search schedule (every stage runs it); the defaults are
    the paper's one-level GRDA search.

    Args:
        method: "aim".
        max_order: highest interaction order searched (2..4).
        top_k: tuples of order p − 1 that seed order p's candidates (0 = ⌊n/2⌋).
        functions: candidate interaction functions (FUNCTIONS; ["inner"] = FIS only).
        function_wise: one embedding per feature per function (else one shared embedding).
        eds: run the embedding dimension search stage.
        alpha_init: every interaction gate's starting value.
        beta_init: every dimension gate's starting value.
        centred: the interaction stages' gated terms read embeddings centred on their
            field's mean, so no term carries a main effect (a labelled variant, not the paper's).
        eds_c / eds_mu: GRDA's threshold settings in the embed stage (β multiplies every
            embedding coordinate: its gradients have another scale than α's).
    """

    method: str = "aim"
    pretrain_epochs: int = 0
    arch_every: int = 1
    arch_split: str = "train"
    arch_optimizer: str = "grda"
    arch_lr: float = 0.01
    max_order: int = 3
    top_k: int = 0
    functions: list[str] = field(default_factory=lambda: list(FUNCTIONS))
    function_wise: bool = True
    eds: bool = True
    alpha_init: float = 0.05
    beta_init: float = 0.05
    eds_c: float = 0.005
    eds_mu: float = 0.6
    centred: bool = False

    def validate(self) -> list[str]:
        p = super().validate()
        if not 2 <= self.max_order <= 4:
            p.append(f"search.max_order: must be in 2..4, got {self.max_order}")
        if self.top_k < 0:
            p.append(f"search.top_k: must be >= 0, got {self.top_k}")
        bad = sorted(set(self.functions) - set(FUNCTIONS))
        if bad or not self.functions:
            p.append(f"search.functions: need a non-empty subset of {list(FUNCTIONS)}, got {self.functions}")
        if self.alpha_init == 0 or self.beta_init == 0:
            p.append("search.alpha_init / beta_init: must not be 0 (every gate would start closed)")
        return p


@dataclass
class AIMVariants:
    """Extra AIM rows (each runs its own search).

    Args:
        ablations: the paper's AIM-IFS-EDS (FIS only) and AIM-EDS (no dimension search).
        shared_embeddings: AIM with one shared embedding per feature instead of function-wise ones.
        orders: AIM searched up to each of these orders besides max_order (e.g. [2, 4]).
        gate_split: AIM with α / β learning on a split carved from train instead of the
            training batches the weights fit (a labelled variant, not the paper's).
        centred: AIM-centred: interaction terms on field-centred embeddings (`search.centred`),
            α / β on a gate split (a labelled variant, not the paper's; as AutoFIS-centred).
    """

    ablations: bool = False
    shared_embeddings: bool = False
    orders: list[int] = field(default_factory=list)
    gate_split: bool = False
    centred: bool = False

    def validate(self) -> list[str]:
        return [f"variants.orders: each in 2..4, got {self.orders}"] if any(not 2 <= o <= 4 for o in self.orders) else []


def combine(top: list[tuple[str, ...]], fields: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Algorithm 1's Combine: each top tuple extended by each field it lacks, deduplicated
    (as sets), in the fields' order."""
    order = {f: i for i, f in enumerate(fields)}
    seen = set()
    for t in top:
        for f in fields:
            if f not in t:
                seen.add(tuple(sorted((*t, f), key=order.__getitem__)))
    return sorted(seen, key=lambda t: [order[f] for f in t])


class AIM:
    """The AIM search method (see the module docstring).

    Args:
        cfg: AIM settings.
        ctx: the run's context.
    """

    Config = AIMConfig
    Variants = AIMVariants
    retrain_options: dict = {}

    def __init__(self, cfg: AIMConfig, ctx: SearchContext):
        self.cfg = cfg
        self.spec = ctx.spec
        self.model_cfg = ctx.model
        self.log = ctx.log
        self.fields = tuple(n for n, d in ctx.model.field_dims(ctx.spec).items() if d > 0)
        self.planted = (getattr(ctx.ds, "meta", None) or {}).get("planted")
        self.order = 2
        self.candidates: list[tuple[str, ...]] = list(combine([(f,) for f in self.fields], self.fields))
        self.kept: list[Term] = []  # kept so far, in order of the stages
        self.positions: dict[str, tuple[int, ...]] | None = None  # after the embed stage
        self.stages: list[dict] = []
        self.supernet: AIMModel | None = None
        self.phase = "pretrain"

    @staticmethod
    def check_config(exp) -> list[str]:
        if exp.model.name not in AIM_BASES:
            return [f"model.name: AIM's bases are {list(AIM_BASES)}, got {exp.model.name!r}"]
        if exp.model.dims:
            return ["model.dims: AIM searches every field at model.embedding_dim (set dims through the search)"]
        return []

    @property
    def stage(self) -> str:
        return f"order {self.order}" if self.positions is None and self.order <= self.cfg.max_order else "embed"

    def build(self) -> AIMModel:
        cfg = self.cfg
        if self.stage == "embed":
            net = AIMModel(self.spec, self.model_cfg, self.kept, function_wise=cfg.function_wise, eds=True,
                           beta_init=cfg.beta_init)
        else:
            terms = self.kept + [(t, fn) for t in self.candidates for fn in cfg.functions]
            net = AIMModel(self.spec, self.model_cfg, terms, function_wise=cfg.function_wise, gated=True,
                           alpha_init=cfg.alpha_init, fixed=frozenset(self.kept), centred=cfg.centred)
        self.supernet = net
        return net

    def gated_terms(self) -> list:
        return [t for t in self.supernet.terms if t.alpha is not None]

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        if self.stage == "embed":
            return [self.supernet.beta]
        return [t.alpha for t in self.gated_terms()]

    def set_phase(self, phase: str) -> None:
        self.phase = phase  # gates act the same in every phase: α and β themselves are the architecture

    def init_architecture(self) -> None:
        with torch.no_grad():
            for p in self.arch_parameters():
                p.fill_(self.cfg.beta_init if self.stage == "embed" else self.cfg.alpha_init)

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        return bce

    def gate_values(self) -> dict[Term, float]:
        fields = self.supernet.embeddings.fields
        out = {}
        for t in self.gated_terms():
            for j, a in enumerate(t.alpha.detach().tolist()):
                out[(tuple(fields[i] for i in t.index[:, j].tolist()), t.function)] = a
        return out

    def next_stage(self, loop: AIMConfig) -> AIMConfig | None:
        if self.stage == "embed":
            beta = self.supernet.beta.detach()
            fields = self.supernet.embeddings.fields
            self.positions = {f: tuple(torch.nonzero(beta[i]).flatten().tolist()) for i, f in enumerate(fields)}
            self.stages.append({"stage": "embed", "dims": {f: len(p) for f, p in self.positions.items()}})
            self.log(f"AIM embed stage: kept dims {self.stages[-1]['dims']}")
            return None
        alpha = self.gate_values()
        kept = [(t, a) for t, a in alpha.items() if a != 0.0]
        self.kept += [t for t, _ in kept]
        p = self.order
        self.stages.append({"stage": f"order {p}", "candidates": len(self.candidates), "all_tuples": math.comb(len(self.fields), p),
                            "candidate_pairs": len(alpha), "kept_pairs": len(kept),
                            "alpha": {f"{'*'.join(t)}:{fn}": round(a, 6) for (t, fn), a in alpha.items()}})
        self.log(f"AIM order {p}: {len(self.candidates)} candidate tuples (of C({len(self.fields)}, {p}) = "
                 f"{math.comb(len(self.fields), p)}) × {len(self.cfg.functions)} functions; kept {len(kept)} interaction-IF pairs")
        self.order += 1
        if self.order <= self.cfg.max_order:
            best: dict[tuple[str, ...], float] = {}
            for (t, _), a in kept:
                best[t] = max(best.get(t, 0.0), abs(a))
            top = sorted(best, key=lambda t: -best[t])[: self.cfg.top_k or len(self.fields) // 2]
            self.candidates = combine(top, self.fields)
            if self.candidates:
                return loop
            self.order = self.cfg.max_order + 1
        if self.cfg.eds:
            return replace(loop, grda_c=self.cfg.eds_c, grda_mu=self.cfg.eds_mu)
        self.positions = {f: tuple(range(self.model_cfg.embedding_dim)) for f in self.fields}
        return None

    def derive(self, ctx: SearchContext) -> Decisions:
        d = self.model_cfg.embedding_dim
        if self.positions is not None and not any(self.positions.values()):
            raise TrainingError(f"AIM's dimension search closed every dimension of every field (search.eds_c = "
                                f"{self.cfg.eds_c}): nothing is left to retrain; lower search.eds_c")
        base = uniform("aim", ctx.spec.names, self.model_cfg.field_dims(ctx.spec), ctx.train_rows)
        fields = {n: (FieldDecision(len(self.positions[n]), self.positions[n] if len(self.positions[n]) < d else None, f.storage)
                      if n in self.positions else f) for n, f in base.clusters[0].fields.items()}
        kept = [t for t in self.kept if all(len(self.positions.get(f, ())) > 0 for f in t[0])]
        details = {"stages": self.stages, "kept": len(kept),
                   "share_kept_by_order": {str(s["stage"]): s["kept_pairs"] / max(s["candidate_pairs"], 1)
                                           for s in self.stages if "kept_pairs" in s}}
        if self.planted:
            planted = self.planted.get("interactions", [])
            details["planted"] = {str(p): planted_scores([t for t, _ in kept if len(t) == p], planted, p)
                                  for p in range(2, self.cfg.max_order + 1)}
        cluster = ClusterDecision(0, fields, ctx.train_rows)
        return Decisions("aim", (cluster,), interactions=tuple(Interaction(t, fn) for t, fn in kept),
                         interaction_model="aim", function_wise=self.cfg.function_wise, details=details)

    def router(self, decisions: Decisions) -> None:
        return None

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: AIMVariants) -> list[Variant]:
        rows = [Variant("aim_supernet", "AIM last search stage", "supernet")]
        if wanted.ablations:
            rows += [Variant("aim_ifs_eds", "AIM-IFS-EDS (FIS only)", "ablation",
                             search={"functions": ["inner"], "eds": False, "function_wise": False}),
                     Variant("aim_eds", "AIM-EDS (FIS + IFS, no dimension search)", "ablation", search={"eds": False})]
        if wanted.shared_embeddings:
            rows.append(Variant("aim_shared", "AIM, shared embeddings", "variant", search={"function_wise": False}))
        rows += [Variant(f"aim_order_{o}", f"AIM, max order {o}", "variant", search={"max_order": o})
                 for o in wanted.orders if o != self.cfg.max_order]
        if wanted.gate_split:
            rows.append(Variant("aim_gate_split", "AIM, α / β on a gate split (not the paper's)", "variant",
                                search={"arch_split": "gate"}))
        if wanted.centred:
            rows.append(Variant("aim_centred", "AIM, centred interaction terms, α / β on a gate split (not the paper's)",
                                "variant", search={"centred": True, "arch_split": "gate"}))
        rows.append(Variant("aim", "AIM", "method", (decisions,)))
        return rows

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        raise AssertionError("AIM variants retrain from scratch")

    def report(self, ctx: SearchContext, searched: dict[str, Decisions], out: Path | None) -> dict:
        entry = {}
        for name, dec in searched.items():
            d = dec.details
            entry[name] = {"kept": d["kept"], "share_kept_by_order": d["share_kept_by_order"],
                           "candidates_by_order": {s["stage"]: [s["candidates"], s["all_tuples"]] for s in d["stages"] if "candidates" in s},
                           "dims": {n: f.dim for n, f in dec.clusters[0].fields.items()},
                           **({"planted": d["planted"]} if "planted" in d else {})}
        return {"aim": entry}
