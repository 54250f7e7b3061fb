"""AutoDis as a method of the search recipe (trainer.search.interface.SearchMethod).

AutoDis searches no architecture: its discretization (projection, softmax over H
meta-embeddings, aggregation) trains end to end with the model, so the recipe skips the
search stage (`searches = False`) and every row is a retrain of fixed decisions:
  Base                   numerical fields bucketized (the Criteo rule: their table row of
                         the token floor(ln(x)^2) for x > 2, else floor(x))
  AutoDis (aggregation)  the configured aggregation is the method's row (exported); the
                         other aggregations are labelled variants
  Raw scalar             the standardised value times one learned vector per field
Every row trains on the same cache and split: the data config encodes the numerical fields
"autodis", whose token is the Criteo bucket and whose dense input is the value AutoDis and
the raw scalar read (serving.encodings). An embedded field has a learned missing embedding
(trainer.models.autodis), and no table or first-order weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from trainer.config import ConfigError
from trainer.decisions import AGGREGATIONS, PROJECTIONS, AutoDisSettings, ClusterDecision, Decisions, uniform
from trainer.models.ctr import CTRModel
from trainer.search.interface import SearchContext, Variant
from trainer.search.loop import SearchLoopConfig

LABELS = {"max": "max-pooling", "topk": "top-K sum", "weighted": "weighted average", "linear": "linear projection",
          "leaky_skip": "LeakyReLU layer + skip"}


@dataclass
class AutoDisConfig(SearchLoopConfig):
    """AutoDis settings; the inherited search schedule is unused (nothing is searched).

    Args:
        method: "autodis".
        buckets: H, meta-embeddings per numerical field.
        temperature: τ of the softmax over the H logits.
        aggregation: the method's aggregation: "max", "topk" or "weighted".
        top_k: K of "topk".
        projection: "linear" (x̂_h = w_h·x) or "leaky_skip" (the paper's LeakyReLU layer
            with a skip connection).
        skip: skip-connection factor of "leaky_skip".
    """

    method: str = "autodis"
    buckets: int = 20
    temperature: float = 1.0
    aggregation: str = "weighted"
    top_k: int = 3
    projection: str = "linear"
    skip: float = 0.1

    @property
    def settings(self) -> AutoDisSettings:
        return AutoDisSettings(self.buckets, self.temperature, self.aggregation, self.top_k, self.projection, self.skip)

    def validate(self) -> list[str]:
        return super().validate() + [f"search.{p}" for p in self.settings.problems()]


@dataclass
class AutoDisVariants:
    """Which rows an AutoDis run trains besides Base (bucketized) and the method.

    Args:
        aggregations: other aggregations trained as labelled variants.
        projections: other projections trained, with the method's aggregation, as
            labelled variants (e.g. the paper's "leaky_skip" beside a "linear" method).
        scalar: train the raw-scalar baseline.
    """

    aggregations: list[str] = field(default_factory=lambda: list(AGGREGATIONS))
    projections: list[str] = field(default_factory=list)
    scalar: bool = True

    def validate(self) -> list[str]:
        p = []
        for key, allowed in (("aggregations", AGGREGATIONS), ("projections", PROJECTIONS)):
            unknown = sorted(set(getattr(self, key)) - set(allowed))
            p += [f"variants.{key}: {unknown} not in {list(allowed)}"] if unknown else []
        return p


class AutoDis:
    """The AutoDis method (see the module docstring).

    Args:
        cfg: AutoDis settings.
        ctx: the run's context; its spec names the fields encoded "autodis".
    """

    Config = AutoDisConfig
    Variants = AutoDisVariants
    searches = False  # the recipe skips the search stage

    def __init__(self, cfg: AutoDisConfig, ctx: SearchContext):
        self.cfg = cfg
        self.spec = ctx.spec
        self.dims = ctx.model.field_dims(ctx.spec)
        self.train_rows = ctx.train_rows
        self.fields = [f.name for f in ctx.spec.fields if f.encoding.name == "autodis"]
        if not self.fields:  # e.g. "*" = "autodis" on a source without numerical fields
            raise ConfigError("data.numerical", [f"no field of {ctx.spec.dataset} is encoded 'autodis'; its numerical "
                                                 f"fields: {ctx.spec.numerical or 'none'}"])
        self.retrain_options: dict = {}
        self.supernet = None
        self.phase = "eval"

    @staticmethod
    def check_config(exp) -> list[str]:
        p = []
        if "autodis" not in exp.data.numerical.values():
            p.append('data.numerical: AutoDis embeds fields encoded "autodis"; set e.g. numerical = { "*" = "autodis" }')
        dims = {exp.model.dims.get(n, exp.model.embedding_dim) for n, e in exp.data.numerical.items() if e == "autodis"}
        if len(dims) > 1 or 0 in dims:
            p.append(f"model.dims: AutoDis fields need one common dim > 0, got {sorted(dims)}")
        return p

    def build(self) -> None:
        return None

    def arch_parameters(self) -> list:
        return []

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def init_architecture(self) -> None:
        pass

    def arch_loss(self, bce):
        return bce

    def decisions(self, name: str, kind: str, settings: AutoDisSettings | None = None) -> Decisions:
        """One cluster at the configured dims; the autodis fields embedded as `kind`."""
        return uniform(name, self.spec.names, self.dims, self.train_rows, numerical={n: kind for n in self.fields},
                       autodis=settings)

    def next_stage(self, loop) -> None:
        return None  # no search stage at all (searches = False)

    def derive(self, ctx: SearchContext) -> Decisions:
        return self.decisions("autodis", "autodis", self.cfg.settings)

    def router(self, decisions: Decisions) -> None:
        return None

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: AutoDisVariants) -> list[Variant]:
        mine = self.cfg.aggregation
        rows = []
        for agg in [mine] + [a for a in AGGREGATIONS if a in wanted.aggregations and a != mine]:
            d = decisions if agg == mine else self.decisions(f"autodis_{agg}", "autodis", replace(self.cfg.settings, aggregation=agg))
            rows.append(Variant(f"autodis_{agg}", f"AutoDis ({LABELS[agg]})", "method" if agg == mine else "variant", (d,)))
        for proj in [p for p in PROJECTIONS if p in wanted.projections and p != self.cfg.projection]:
            name = f"autodis_{mine}_{proj}"
            d = self.decisions(name, "autodis", replace(self.cfg.settings, projection=proj))
            rows.append(Variant(name, f"AutoDis ({LABELS[mine]}, {LABELS[proj]})", "variant", (d,)))
        if wanted.scalar:
            rows.append(Variant("scalar", "Raw scalar (value × one vector)", "baseline", (self.decisions("scalar", "scalar"),)))
        return rows

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        raise NotImplementedError("AutoDis rows train from scratch")

    def report(self, ctx: SearchContext, searched: dict[str, Decisions], out: Path | None) -> dict:
        return {"autodis": asdict(self.cfg.settings), "fields": self.fields, "bucketized_row": "base"}
