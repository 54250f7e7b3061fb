"""What the schemes that run a search method's own recipe share (AutoDPQ, AutoDim): one
recipe run per seed under OUT/seed_<s>/<method>/run, its report, and the bundles it exports."""

from __future__ import annotations

from pathlib import Path

from trainer.frontier.bundles import Bench


def check(exp, name: str, experiment, method) -> list[str]:
    """Config problems of scheme `name`: its recipe experiment's, then the method's own rules."""
    problems: list[str] = []
    sexp = experiment(exp, exp.frontier.scheme_configs[name], exp.train.seed, problems)
    return problems + (method.check_config(sexp) if sexp is not None else [])


def run_recipe(bench: Bench, sexp, name: str, label: str, rows: list[str]) -> tuple[dict, dict, list[tuple[str, str, Path]]]:
    """(report, report rows by method, [(row, table storage, bundle)]): the method's bundle
    first, then `rows`', each as trained ("none") and then with every storage of the
    experiment's `report.quantize`."""
    from trainer.jobs.search import run

    where = bench.out / name / "run"
    bench.log(f"== {label} search recipe (seed {bench.seed}) → {where}")
    report = run(sexp, where, resume=bench.resume, log=bench.log)
    bundles = [(name, "none", where / "bundle")] + [(r, "none", where / "bundles" / r) for r in rows]
    bundles += [(r, q, where / "bundles" / f"{r}_{q}") for q in sexp.report.quantize for r in [name, *rows]]
    return report, {r["method"]: r for r in report["rows"]}, bundles
