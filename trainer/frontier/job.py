"""The compression frontier: test AUC against served bytes for every configured scheme.

    python -m trainer frontier --config configs/frontier_ml100k.toml --out runs/frontier_ml100k [--resume]
    python -m trainer frontier --config configs/tiny/frontier_synthetic.toml --out /tmp/frontier frontier.seeds=[0,1]

For each seed and each scheme of `[frontier.schemes.*]` (trainer.frontier.registry), the
scheme trains its models and exports each point as a bundle (trainer.frontier.bundles);
every bundle is then scored through serving's Predictor (test AUC / logloss), its bytes
read with `serving.bundle.served_bytes`, and all bundles are timed together as
`trainer.bench_served` times them. Writes:
  OUT/run.json, OUT/run.log     the run record and its log (trainer.jobs.rundir)
  OUT/seed_<s>/<key>/           each trained model (model/) and bundle (bundle/)
  OUT/frontier.json             the points, one per (scheme, setting, seed); each with the AUC
                                of the test rows holding a low-frequency id (`test_auc_low`)
                                and, against the same seed's FE fp32, a paired-bootstrap
                                interval of the AUC difference (`auc_vs_fe_fp32`)
  OUT/frontier.md               one row per (scheme, setting): seed means, frontier marked
  OUT/frontier.png              AUC vs log bytes, Pareto frontier, seeds as error bars
One process (the bundles are written by the process that trains them).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import ConfigError, build_section, load_sections
from trainer.data.config import DataConfig, dense_input_problems
from trainer.distributed import init_distributed
from trainer.frontier.bundles import Bench, score_bundle, time_bundles
from trainer.frontier.intervals import low_frequency_rows, paired_bootstrap, rank_auc
from trainer.frontier.plot import plot_frontier
from trainer.frontier.registry import SCHEMES
from trainer.frontier.table import REFERENCE, group_points, mark_frontier, markdown
from trainer.jobs.rundir import check_data, open_run
from trainer.jobs.train import prepare
from trainer.jsonfile import write_json
from trainer.models.ctr import ModelConfig
from trainer.training import TrainConfig

SPLIT_SCHEMES = ("others", "lowdim", "autodpq")  # schemes that read the frequency split


@dataclass
class FrontierConfig:
    """What the frontier runs.

    Args:
        seeds: train seeds; every point is trained and measured once per seed.
        threshold: ids with train count < threshold are low-frequency (AutoDPQ's rule; id 0, OOV, never is).
        infer_batch: rows per Predictor call when timing the bundles.
        infer_repeats: timed passes per bundle; the median is reported.
        schemes: scheme name → its settings table (trainer.frontier.registry), run in this order.
        scheme_configs: the same tables typed by each scheme's Config (filled by `load_experiment`).
    """

    seeds: list[int] = field(default_factory=lambda: [0])
    threshold: int = 20
    infer_batch: int = 1024
    infer_repeats: int = 3
    schemes: dict = field(default_factory=dict)
    scheme_configs: dict = field(default_factory=dict, init=False)

    def validate(self) -> list[str]:
        p = []
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            p.append(f"frontier.seeds: need distinct seeds, got {self.seeds}")
        for key in ("threshold", "infer_batch", "infer_repeats"):
            if getattr(self, key) < 1:
                p.append(f"frontier.{key}: must be >= 1, got {getattr(self, key)}")
        if not self.schemes:
            p.append(f"frontier.schemes: name at least one of {sorted(SCHEMES)} as a [frontier.schemes.<name>] table")
        return p


@dataclass
class FrontierExperiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    frontier: FrontierConfig = field(default_factory=FrontierConfig)


def load_experiment(path: str, overrides: list[str]) -> FrontierExperiment:
    """Every section typed; each scheme's table by its own Config; one ConfigError for every problem."""
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "frontier": FrontierConfig}
    exp = FrontierExperiment(**load_sections(path, sections, overrides))
    problems = dense_input_problems(exp.data, exp.model.reads_dense)
    unknown = sorted(set(exp.frontier.schemes) - set(SCHEMES))
    if unknown:
        problems.append(f"frontier.schemes: {unknown} are not schemes; known: {sorted(SCHEMES)}")
    for name, raw in exp.frontier.schemes.items():
        if name not in SCHEMES:
            continue
        typed = build_section(SCHEMES[name].Config, raw, f"frontier.schemes.{name}", problems)
        if typed is not None:
            exp.frontier.scheme_configs[name] = typed
    if not problems:
        for name in exp.frontier.scheme_configs:
            problems += SCHEMES[name].check(exp)
    split = sorted(set(exp.frontier.schemes) & set(SPLIT_SCHEMES))
    if split and exp.data.source == "synthetic" and exp.data.min_count < 2:
        problems.append(f"data.min_count: must be >= 2 for {split} on synthetic data (its pre-coded ids are not in "
                        "train-count order, so the low-frequency ids would not be a suffix)")
    if problems:
        raise ConfigError(str(path), list(dict.fromkeys(problems)))  # schemes share some rules: each problem once
    return exp


def add_intervals(points: list[dict], ds, threshold: int, log) -> None:
    """Each point's low-frequency-row AUC and its paired-bootstrap AUC difference against the
    same seed's FE fp32 point (when the run has one); drops the points' probabilities."""
    labels = ds.labels[ds.indices("test")]
    low = low_frequency_rows(ds, "test", threshold)
    log(f"{low.mean():.1%} of test rows hold a low-frequency id (train count < {threshold})")
    refs = {p["seed"]: p["probs"] for p in points if p["scheme"] == REFERENCE}
    for p in points:
        probs = p.pop("probs")
        p["test_rows_low"] = float(low.mean())
        p["test_auc_low"] = rank_auc(probs[low], labels[low]) if 0 < labels[low].sum() < low.sum() else None
        if p["seed"] in refs and p["scheme"] != REFERENCE:
            p[f"auc_vs_{REFERENCE}"] = paired_bootstrap(probs, refs[p["seed"]], labels, seed=p["seed"])


def run(exp: FrontierExperiment, out: str | Path, *, resume: bool = False, overwrite: bool = False, log=print) -> list[dict]:
    start = time.perf_counter()
    env = init_distributed()
    if env.world_size > 1:
        raise ConfigError("frontier", ["runs in one process (it exports every bundle it trains); start it without torchrun"])
    out = Path(out)
    holds = ("frontier.json",) + tuple(f"seed_{s}" for s in exp.frontier.seeds)
    log = open_run(out, exp, resume=resume, overwrite=overwrite, holds=holds, env=env, log=log)
    ds = prepare(exp, env, log)
    check_data(out, ds.meta["fingerprint"], env)
    exported = []
    for seed in exp.frontier.seeds:
        bench = Bench(ds, exp, seed, env, out / f"seed_{seed}", resume, log)
        for name, cfg in exp.frontier.scheme_configs.items():
            exported += SCHEMES[name].points(cfg, bench)
    log(f"== scoring {len(exported)} bundles through serving's Predictor")
    points = []
    for e in exported:
        points.append({"scheme": e.scheme, "label": e.label, "settings": e.settings, "seed": e.seed,
                       **score_bundle(e.bundle, ds), "train_seconds": e.train_seconds,
                       "bundle": str(e.bundle.relative_to(out))})
    add_intervals(points, ds, exp.frontier.threshold, log)
    log(f"== timing {len(exported)} bundles (one thread, batches of {exp.frontier.infer_batch}, "
        f"median of {exp.frontier.infer_repeats} passes interleaved over each seed's bundles)")
    # one seed's bundles loaded at a time: 27 million-id bundles held at once took 18.8 GiB
    # and the machine's memory (measured); passes interleave within a seed
    seconds = {}
    for seed in exp.frontier.seeds:
        seconds |= time_bundles({p["bundle"]: out / p["bundle"] for p in points if p["seed"] == seed}, ds,
                                exp.frontier.infer_batch, exp.frontier.infer_repeats)
    for p in points:
        p["infer_s_per_10k"] = seconds[p["bundle"]]
    rows = group_points(points)
    front = mark_frontier(rows)
    on = {(r["scheme"], r["label"]) for r in rows if r["on_frontier"]}
    for p in points:
        p["on_frontier"] = (p["scheme"], p["label"]) in on
    write_json(out / "frontier.json", points)
    table = markdown(rows)
    (out / "frontier.md").write_text(table + "\n")
    plot_frontier(rows, front, out / "frontier.png",
                  f"{ds.spec.dataset}, {exp.model.name} dim {exp.model.embedding_dim}, seeds {exp.frontier.seeds}")
    log("\n" + table)
    # what a 2-core, 24 GiB machine must hold: this process's peak resident set (ru_maxrss, KiB on Linux)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    log(f"frontier → {out / 'frontier.json'}, {out / 'frontier.png'} ({(time.perf_counter() - start) / 60:.1f} min, "
        f"peak RSS {peak:.2f} GiB)")
    return points
