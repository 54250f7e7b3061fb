"""The search recipe every method runs: Base → search → decisions → retrain → export → report.

    python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas_ml100k [--resume] [section.key=value ...]

Stages write under OUT (one run per OUT: trainer.jobs.rundir); with --resume a stage whose
output is complete is loaded instead of rerun:
  OUT/run.json, OUT/run.log      the run record (config, command, commit, versions) and its log
  OUT/rows/base/cluster_0/       Base: every field at the configured dim, all rows (also the
                                 trained model a method may start from)
  OUT/search/                    supernet.pt + search.json (history, seconds); absent for a
                                 method that searches nothing (`searches = False`, AutoDis)
  OUT/decisions.json             the typed decisions (trainer.decisions)
  OUT/rows/<name>/cluster_<c>/   every retrained row: the method, its ablations, baselines,
                                 labelled variants (a row with its own search keeps it there too)
  OUT/bundle/                    the method's models (+ router) as served after the export guard
                                 (trainer.jobs.guard); checked against offline scores
  OUT/plots/                     method figures
  OUT/report.json                one schema for every method (trainer.jobs.report)
The search stage trains the supernet on unsharded tables with Adam (as the papers train);
every retrain uses the configured storage (sharded: DMP + FBGEMM fused optimizer). Every
stage runs under `torchrun --nproc_per_node N -m trainer search ...`: batches are cut across
ranks, the supernet is replicated with its gradients (architecture included) averaged, the
decisions are rank 0's, and rank 0 alone writes decisions, report and bundle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from serving.bundle.manifest import QUANTIZATIONS
from trainer.config import ConfigError, load_sections, read_toml
from trainer.data.config import DataConfig, dense_input_problems
from trainer.decisions import Decisions, uniform
from trainer.distributed import broadcast, init_distributed
from trainer.jobs.export import export_bundle
from trainer.jobs.guard import collapse, guard
from trainer.jobs.report import cluster_purity, format_rows, supernet_row, trained_row
from trainer.jobs.retrain import retrain, retrain_shared, route
from trainer.jobs.search_stage import search_stage
from trainer.jobs.rundir import check_data, open_run
from trainer.jobs.train import prepare, quiet
from trainer.jsonfile import write_json
from trainer.models.ctr import ModelConfig
from trainer.models.layout import EmbeddingLayout
from trainer.search.interface import SearchContext
from trainer.search.loop import gate_mask
from trainer.search.registry import METHODS
from trainer.training import CTRTrain, TrainConfig, evaluate


@dataclass
class ReportConfig:
    """What the recipe writes besides the rows.

    Args:
        export: write and verify OUT/bundle from the method's row.
        plots: write the method's figures under OUT/plots.
        export_rows: more rows to export and verify, each to OUT/bundles/<row> (e.g. "base",
            the method's row as retrained, a labelled variant), for side-by-side serving
            benchmarks.
        quantize: table storages ("fp16", "int8", "int4"); the method's bundle and every
            export_rows bundle are also written with their tables quantized at export
            (post-training), to OUT/bundles/<row>_<q> (the method's as <method>_<q>).
    """

    export: bool = True
    plots: bool = True
    export_rows: list[str] = field(default_factory=list)
    quantize: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        bad = sorted(set(self.quantize) - set(QUANTIZATIONS))
        p = [f"report.quantize: {bad} not in {sorted(QUANTIZATIONS)}"] if bad else []
        return p + (["report.quantize: needs report.export = true"] if self.quantize and not self.export else [])


@dataclass
class SearchExperiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: Any = None
    variants: Any = None
    report: ReportConfig = field(default_factory=ReportConfig)


def load_experiment(path: str, overrides: list[str]) -> SearchExperiment:
    """Every section typed by the method's own dataclasses; cross-section mistakes raise the same ConfigError."""
    name = read_toml(path, overrides).get("search", {}).get("method")
    if name not in METHODS:
        raise ConfigError(str(path), [f"search.method: {name!r} is not one of {sorted(METHODS)}"])
    cls = METHODS[name]
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": cls.Config,
                "variants": cls.Variants, "report": ReportConfig}
    exp = SearchExperiment(**load_sections(path, sections, overrides))
    problems = dense_input_problems(exp.data, exp.model.reads_dense) + cls.check_config(exp)
    if getattr(exp.search, "holdout", False) and not hasattr(cls, "search_parameters"):
        problems.append(f"search.holdout: {name} has no search parameters to train with its weights frozen")
    if problems:
        raise ConfigError(str(path), problems)
    return exp


def supernet_params(supernet: torch.nn.Module) -> int:
    return sum(m.layout.embedding_params for m in supernet.modules() if isinstance(getattr(m, "layout", None), EmbeddingLayout))


def load_or_derive(method, ctx: SearchContext, out: Path, resume: bool, name: str) -> Decisions:
    """OUT/decisions.json on resume, else derived: rank 0's decisions on every rank (replicas
    derive from equal supernets, but float sums may round differently), written by rank 0."""
    path = out / "decisions.json"
    if resume and path.exists():
        return Decisions.from_json(json.loads(path.read_text()))
    decisions = Decisions.from_json(broadcast(method.derive(ctx).replace(method=name).to_json(), ctx.env))
    if ctx.env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, decisions.to_json())
    return decisions


def holdout_gate(search, n_train: int, seed: int) -> np.ndarray | None:
    """The gate split's train rows under a holdout search (the search loop draws the same
    rows), else None."""
    return gate_mask(n_train, search.gate_fraction, seed) if getattr(search, "holdout", False) else None


def train_on(assign: dict, rows: np.ndarray) -> dict:
    """`assign` with the train rows outside `rows` in no cluster (-1): no model trains on them."""
    return {**assign, "train": np.where(rows, assign["train"], -1)}


RUN_FILES = ("report.json", "decisions.json", "search", "rows", "bundle", "bundles")


def run(exp: SearchExperiment, out: str | Path, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    env = init_distributed()
    if not env.is_main:
        log = quiet
    out = Path(out)
    log = open_run(out, exp, resume=resume, overwrite=overwrite, holds=RUN_FILES, env=env, log=log)
    ds = prepare(exp, env, log)
    check_data(out, ds.meta["fingerprint"], env)
    cls = METHODS[exp.search.method]
    tcfg, rows_dir = exp.train, out / "rows"

    one = route(None, ds, tcfg.eval_batch_size)
    # a holdout search: the Base trains outside the gate split, warm-started rows inside it
    gate = holdout_gate(exp.search, len(one["train"]), tcfg.seed)
    base_assign = one if gate is None else train_on(one, ~gate)
    log("== Base: every field at its configured dim, " + ("all rows" if gate is None else
                                                          "the train rows outside the gate split (holdout search)"))
    base_dec = uniform("base", ds.spec.names, exp.model.field_dims(ds.spec), int((base_assign["train"] == 0).sum()))
    base = retrain(ds, base_dec, base_assign, exp.model, tcfg, env, rows_dir / "base", resume, log)
    rows = [trained_row("base", "Base", "baseline", base, None, one, ds)]
    exportable = {"base": (base, rows[0], None)}

    ctx = SearchContext.of(ds, exp.model, tcfg, base.models[0], env, log)
    method = cls(exp.search, ctx)
    if getattr(method, "searches", True):  # a method without the attribute searches
        search = search_stage(method, ds, exp.search, tcfg, env, out, resume, log)
    else:
        search = {"best_epoch": None, "best_val_auc": None, "seconds": 0.0}
        log("== no search stage: the method trains end to end in its rows")
    decisions = load_or_derive(method, ctx, out, resume, exp.search.method)
    router = method.router(decisions)
    assign = route(router, ds, tcfg.eval_batch_size)
    searched = {exp.search.method: decisions}
    main = None
    variants = broadcast(method.variants(ctx, decisions, exp.variants), env)
    known = {"base"} | {v.name for v in variants if v.kind != "supernet"} | {f"{v.name}_served" for v in variants if v.kind == "method"}
    unknown = sorted(set(exp.report.export_rows) - known)
    if unknown:
        raise ConfigError("report.export_rows", [f"rows {unknown} are not trained by this run; it trains {sorted(known)}"])
    for v in variants:
        log(f"== {v.label}")
        if v.kind == "supernet":
            method.set_phase("eval")
            m = {f"{s}_{k}": x for s in ("val", "test") for k, x in evaluate(CTRTrain(method.supernet), ds, s, tcfg, env).items()}
            rows.append(supernet_row(v.name, v.label, method.supernet, m, supernet_params(method.supernet), ds, search["seconds"]))
            continue
        v_router, v_assign, v_search, candidates = router, assign, 0.0, v.decisions
        if v.search:
            sub = cls(replace(exp.search, **v.search), ctx)
            v_search = search_stage(sub, ds, sub.cfg, tcfg, env, rows_dir / v.name, resume, log)["seconds"]
            sub_dec = load_or_derive(sub, ctx, rows_dir / v.name, resume, v.name)
            searched[v.name] = sub_dec
            v_router, candidates = sub.router(sub_dec), (sub_dec,)
            v_assign = route(v_router, ds, tcfg.eval_batch_size)
        elif len(v.decisions[0].clusters) == 1:
            v_router, v_assign = None, one
        elif v.decisions[0].router != decisions.router:  # the same search, clustered another way
            v_router = method.router(v.decisions[0])
            v_assign = route(v_router, ds, tcfg.eval_batch_size)
        v_tcfg = tcfg
        if v.init == "method" and gate is not None:  # local tables: the method's frozen weights stay frozen
            v_assign, v_tcfg = train_on(v_assign, gate), replace(tcfg, storage="local")
        model_cfg = replace(exp.model, name=v.model) if v.model else exp.model
        init = (lambda c, m, v=v: method.init_retrain(v, c, m)) if v.init == "method" else None
        runs = []
        for d in candidates:
            where = rows_dir / v.name / (d.method if len(candidates) > 1 else "")
            if d.shared_tables:  # one model routes its rows itself
                runs.append(retrain_shared(ds, d, method.build_shared(d), model_cfg, tcfg, env, where, resume, log, init))
                own = route(lambda dense, sparse: runs[-1].models[0].score_all(dense, sparse)[1], ds, tcfg.eval_batch_size)
                moved = float((own["test"] != v_assign["test"]).mean())
                log(f"{v.label}: {moved:.1%} of test rows route to another cluster than the search's router sends them to")
                v_router, v_assign = None, one
            else:
                runs.append(retrain(ds, d, v_assign, model_cfg, v_tcfg, env, where, resume, log, init, method.retrain_options))
        best = max(runs, key=lambda t: t.metrics["val_auc"])
        row = trained_row(v.name, v.label, v.kind, best, v_router, v_assign, ds, v_search or search["seconds"])
        if ds.groups is not None and (v_router is not None or candidates[0].shared_tables):
            row["cluster_purity"] = cluster_purity(ds, (own if candidates[0].shared_tables else v_assign)["test"])
        if candidates[0].shared_tables:
            row["test_rows_rerouted"] = moved
        if len(runs) > 1:
            row |= {"picked": best.decisions.method, "candidates": {t.decisions.method: t.metrics for t in runs},
                    "seconds": {"search": 0.0, "retrain": sum(t.seconds for t in runs)}}
        rows.append(row)
        exportable[v.name] = (best, row, v_router)
        if v.kind != "method":
            continue
        main = (best, row, v_router)
        if len(best.decisions.clusters) > 1:  # the export guard; the row above stays the method as retrained
            served, checks = guard(best, base, v_assign, ds, log)
            decisions = served.decisions
            served, s_router, s_assign = collapse(served, v_router, v_assign, one, log)
            if env.is_main:
                write_json(out / "decisions.json", decisions.to_json())
            s_row = trained_row(f"{v.name}_served", f"{v.label} as served (export guard)", "served", served, s_router,
                                s_assign, ds, row["seconds"]["search"]) | {"guard": checks}
            rows.append(s_row)
            main = (served, s_row, s_router)
            exportable[s_row["method"]] = main

    report = {
        "dataset": ds.spec.dataset, "method": exp.search.method, "model": exp.model.name, "seed": tcfg.seed,
        "rows": rows,
        "search": {k: search[k] for k in ("best_epoch", "best_val_auc", "seconds")},
        "cluster_purity": cluster_purity(ds, assign["test"]) if len(decisions.clusters) > 1 else None,
        "config": asdict(exp),
    }
    if report["cluster_purity"] is not None:
        log(f"cluster purity vs planted sub-populations (test rows): {report['cluster_purity']:.3f}")
    if env.is_main:
        if exp.report.export:
            report["bundle"] = export_bundle(ds, *main, tcfg.seed, out / "bundle", log)
        report["bundles"] = {n: export_bundle(ds, *exportable[n], tcfg.seed, out / "bundles" / n, log) for n in exp.report.export_rows}
        for q in exp.report.quantize:
            for n, (trained, row, router) in [(exp.search.method, main)] + [(n, exportable[n]) for n in exp.report.export_rows]:
                stored = replace(trained, decisions=trained.decisions.replace(quantize=q))
                report["bundles"][f"{n}_{q}"] = export_bundle(ds, stored, row, router, tcfg.seed, out / "bundles" / f"{n}_{q}", log)
        report |= method.report(ctx, searched, out / "plots" if exp.report.plots else None)
        write_json(out / "report.json", report)
        log("\n" + format_rows(rows))
        log(f"report → {out / 'report.json'}")
    dist.barrier()
    return report
