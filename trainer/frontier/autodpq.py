"""AutoDPQ and its Grid / Random baselines as frontier points, produced by the search recipe itself.

The scheme runs `trainer.jobs.search.run` with the AutoDPQ method on the frontier's data,
model and training settings (the frontier's low-frequency threshold; first-order weights
in their own tables, as AutoDPQ requires) under OUT/seed_<s>/autodpq/run/, and takes the
bundles that run exports: OUT/…/run/bundle (AutoDPQ) and OUT/…/run/bundles/<row> (the
baselines, and the byte-aware AutoDPQ rows, one per λ of `size_weights`).
The recipe's own FE model is what every one of them starts from (its `Base` row); it is not
a frontier point, the frontier's FE scheme trains its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from trainer.config import build_section
from trainer.frontier import recipe
from trainer.frontier.bundles import Bench, Exported, bundle_decisions
from trainer.frontier.schemes import quantize_problems
from trainer.search.autodpq.method import AutoDPQ as Method
from trainer.search.autodpq.method import AutoDPQConfig, AutoDPQVariants

BASELINES = ("grid", "random")


@dataclass
class AutoDPQSchemeConfig:
    """Args:
        search: the AutoDPQ `[search]` keys (trainer.search.autodpq.method.AutoDPQConfig;
            `method` and `threshold` are the frontier's).
        baselines: AutoDPQ's baselines to take as points besides AutoDPQ: "grid", "random".
        random_trials: draws of the Random baseline (the best on validation is kept).
        size_weights: one byte-aware AutoDPQ point per λ (AutoDPQVariants.size_weights).
        quantize: table storages ("fp16", "int8", "int4"): every point again with its tables
            (frequent rows, centroids) quantized at export, post-training; tables that
            quantizing would not shrink (4-wide first-order weights) stay float32.
    """

    search: dict = field(default_factory=dict)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    random_trials: int = 1
    size_weights: list[float] = field(default_factory=list)
    quantize: list[str] = field(default_factory=list)

    def rows(self) -> list[str]:
        """The recipe rows exported besides AutoDPQ itself."""
        return list(self.baselines) + [f"autodpq_bytes_{w:g}" for w in self.size_weights]

    def validate(self) -> list[str]:
        bad = sorted(set(self.baselines) - set(BASELINES))
        p = [f"frontier.schemes.autodpq.baselines: {bad} not in {list(BASELINES)}"] if bad else []
        p += [f"frontier.schemes.autodpq.search.{k}: set by the frontier, not here" for k in ("method", "threshold") if k in self.search]
        p += [f"frontier.schemes.autodpq.size_weights: each must be >= 0, got {self.size_weights}"] if any(
            not w >= 0 for w in self.size_weights) else []
        p += quantize_problems("frontier.schemes.autodpq.quantize", self.quantize)
        return p + ([f"frontier.schemes.autodpq.random_trials: must be >= 1, got {self.random_trials}"] if self.random_trials < 1 else [])


def search_config(cfg: AutoDPQSchemeConfig, threshold: int, problems: list[str]) -> AutoDPQConfig | None:
    return build_section(AutoDPQConfig, {**cfg.search, "threshold": threshold}, "frontier.schemes.autodpq.search", problems)


def experiment(frontier_exp, cfg: AutoDPQSchemeConfig, seed: int, problems: list[str]):
    """The search recipe's experiment for one seed (None, with problems, if it does not load)."""
    from trainer.jobs.search import ReportConfig, SearchExperiment

    search = search_config(cfg, frontier_exp.frontier.threshold, problems)
    if search is None:
        return None
    return SearchExperiment(
        data=frontier_exp.data, model=replace(frontier_exp.model, first_order_column=False),
        train=replace(frontier_exp.train, seed=seed), search=search,
        variants=AutoDPQVariants(baselines=list(cfg.baselines), random_trials=cfg.random_trials,
                                 size_weights=list(cfg.size_weights)),
        report=ReportConfig(export=True, plots=False, export_rows=cfg.rows(), quantize=list(cfg.quantize)),
    )


class AutoDPQ:
    Config = AutoDPQSchemeConfig

    @staticmethod
    def check(exp) -> list[str]:
        return recipe.check(exp, "autodpq", experiment, Method)

    @staticmethod
    def points(cfg: AutoDPQSchemeConfig, bench: Bench) -> list[Exported]:
        report, rows, bundles = recipe.run_recipe(bench, experiment(bench.exp, cfg, bench.seed, []), "autodpq", "AutoDPQ",
                                                  cfg.rows())
        out = []
        for name, q, path in bundles:
            fields = bundle_decisions(path)["clusters"][0]["fields"]
            chosen = {n: f"K{f['storage']['k']}xD{f['storage']['d']}" if f["storage"]["kind"] == "dpq" else f["storage"]["kind"]
                      for n, f in fields.items() if f["storage"]["kind"] != "full" or n in report["split"] and report["split"][n]["n_low"]}
            # FE (every one of them starts from it) + its retraining; the search counts for AutoDPQ only
            # (the recipe also books it on a baseline row trained from one candidate)
            seconds = rows["base"]["seconds"]["retrain"] + rows[name]["seconds"]["retrain"] + (
                rows[name]["seconds"]["search"] if name == "autodpq" else 0.0)
            settings = {"threshold": bench.threshold, "chosen": chosen} | ({"picked": rows[name]["picked"]} if "picked" in rows[name] else {})
            scheme = "autodpq" if name == "autodpq" else "autodpq_bytes" if name.startswith("autodpq_bytes") else f"autodpq_{name}"
            label = {"autodpq": "AutoDPQ", "grid": "Grid", "random": "Random"}.get(name) or f"λ={name.rsplit('_', 1)[1]}"
            if scheme == "autodpq_bytes":
                settings["size_weight"] = float(name.rsplit("_", 1)[1])
            if q != "none":
                settings["quantize"] = q
                label = f"{label} {q}"
            out.append(Exported(scheme, settings, label, bench.seed, path, seconds))
        return out
