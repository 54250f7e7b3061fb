"""AutoDim's per-field dims (and iHAS-2's) as frontier points, produced by the search recipe itself.

The scheme runs `trainer.jobs.search.run` with the AutoDim method on the frontier's data,
model and training settings under OUT/seed_<s>/autodim/run/ and takes the bundles that run
exports: OUT/…/run/bundle (AutoDim's argmax dims, retrained from scratch) and, with
`ihas_2`, OUT/…/run/bundles/ihas_2 (the dims a one-cluster iHAS search keeps, retrained).
Both store every id of every kept field at the field's dim: dims, not row sharing, are what
they trade for bytes. The recipe's Base (every field at model.embedding_dim) is the
frontier's FE and is not a point.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from trainer.config import build_section
from trainer.frontier import recipe
from trainer.frontier.bundles import Bench, Exported, bundle_decisions
from trainer.search.autodim.method import AutoDim as Method
from trainer.search.autodim.method import AutoDimConfig, AutoDimVariants


@dataclass
class AutoDimSchemeConfig:
    """Args:
        search: the AutoDim `[search]` keys (trainer.search.autodim.method.AutoDimConfig).
        ihas_2: also the dims a one-cluster iHAS search keeps (AutoDimVariants.ihas_2).
        ihas: that iHAS search's settings (AutoDimVariants.ihas).
    """

    search: dict = field(default_factory=dict)
    ihas_2: bool = False
    ihas: dict = field(default_factory=dict)

    def rows(self) -> list[str]:
        return ["ihas_2"] if self.ihas_2 else []

    def validate(self) -> list[str]:
        return ["frontier.schemes.autodim.search.method: set by the frontier, not here"] if "method" in self.search else []


def experiment(frontier_exp, cfg: AutoDimSchemeConfig, seed: int, problems: list[str]):
    """The search recipe's experiment for one seed (None, with problems, if it does not load)."""
    from trainer.jobs.search import ReportConfig, SearchExperiment

    search = build_section(AutoDimConfig, cfg.search, "frontier.schemes.autodim.search", problems)
    if search is None:
        return None
    return SearchExperiment(
        data=frontier_exp.data, model=frontier_exp.model, train=replace(frontier_exp.train, seed=seed), search=search,
        variants=AutoDimVariants(random=False, ihas_2=cfg.ihas_2, ihas=dict(cfg.ihas)),
        report=ReportConfig(export=True, plots=False, export_rows=cfg.rows()),
    )


class AutoDim:
    Config = AutoDimSchemeConfig

    @staticmethod
    def check(exp) -> list[str]:
        return recipe.check(exp, "autodim", experiment, Method)

    @staticmethod
    def points(cfg: AutoDimSchemeConfig, bench: Bench) -> list[Exported]:
        _, rows, bundles = recipe.run_recipe(bench, experiment(bench.exp, cfg, bench.seed, []), "autodim", "AutoDim",
                                             cfg.rows())
        labels = {"autodim": rows["autodim"]["label"], "ihas_2": "iHAS-2"}
        out = []
        for name, _, path in bundles:
            fields = bundle_decisions(path)["clusters"][0]["fields"]
            # AutoDim: its search + retraining; iHAS-2: its retraining only (its iHAS search runs
            # inside the recipe's variants, untimed; the recipe books AutoDim's search on the row)
            seconds = rows[name]["seconds"]["retrain"] + (rows[name]["seconds"]["search"] if name == "autodim" else 0.0)
            out.append(Exported(name, {"dims": {n: f["dim"] for n, f in fields.items()}}, labels[name], bench.seed, path,
                                seconds))
        return out
