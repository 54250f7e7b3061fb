"""Any search method's report rows over seeds (and base models): mean ± sample std.

    python -m trainer.jobs.tables --config configs/ihas_ml100k.toml --out runs/ihas_seeds [--seeds 0 1 2]
        [--models deepfm ipnn dcn] [--jobs 1] [--resume] [-- section.key=value ...]

Each (model, seed) is one `python -m trainer search` run in OUT/[<model>/]seed_<s>/ with
`train.seed=<s>` (and `model.name=<model>` when --models is given): a subprocess, so
`--jobs` runs can overlap and a failed run does not take the others down; `--resume`
reuses finished stages. The data split stays the config's. Writes OUT/tables.json
(every figure per seed and aggregated) and OUT/tables.md, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trainer.jsonfile import write_json

FIGURES = ("test_auc", "test_logloss", "val_auc", "embedding_params", "embedding_bytes", "served_bytes", "infer_s_per_10k",
           "cluster_purity")


def run_search_job(config: str, out: Path, overrides: list[str], resume: bool) -> dict:
    """`python -m trainer search` in a subprocess, output to OUT/job.log; OUT/report.json plus
    `wall_seconds` (with --resume: only what was not reused)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "trainer", "search", "--config", config, "--out", str(out),
           *(["--resume"] if resume else []), *overrides]
    start = time.perf_counter()
    with open(out / "job.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}); see {out / 'job.log'}")
    return {**json.loads((out / "report.json").read_text()), "wall_seconds": time.perf_counter() - start}


def stats(values: list[float]) -> dict:
    """Mean, sample std (ddof 1) and the values themselves."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a), "values": a.tolist()}


def pm(s: dict, digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def row_seconds(row: dict) -> float:
    return sum(row["seconds"].values())


def aggregate(reports: list[dict]) -> dict:
    """Per row key: each figure over seeds, and the row's own stage seconds relative to Base's retrain."""
    out = {}
    for row in reports[0]["rows"]:
        key = row["method"]
        rows = [next(r for r in rep["rows"] if r["method"] == key) for rep in reports]
        base = [next(r for r in rep["rows"] if r["method"] == "base") for rep in reports]
        out[key] = {"label": row["label"], "kind": row["kind"],
                    **{f: stats([r[f] for r in rows]) for f in FIGURES if all(r.get(f) is not None for r in rows)},
                    "time_vs_base": stats([row_seconds(r) / row_seconds(b) for r, b in zip(rows, base)])}
    return out


def markdown(result: dict) -> str:
    lines = [f"# {result['method']} on {result['dataset']} (mean ± sample std over seeds {result['seeds']})", "",
             "Served bytes: every tensor the served modules hold to score a row (router, tables, codes, centroids, "
             "first-order weights, padding, dense layers). Embedding bytes: the scoring models' stored embedding tables "
             "and codes. s / 10k rows: one thread. Time: the row's own search + retrain seconds / Base's training seconds.", ""]
    for model, table in result["tables"].items():
        lines += [f"## {model}", "", "| Method | test AUC ↑ | Logloss ↓ | Emb params | Emb bytes | Served bytes | s / 10k rows | Time × Base |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in table.values():
            sizes = " | ".join(f"{r[f]['mean']:,.0f}" if f in r else "-" for f in ("embedding_params", "embedding_bytes", "served_bytes"))
            lines.append(f"| {r['label']} | {pm(r['test_auc'])} | {pm(r['test_logloss'])} | {sizes} | "
                         f"{pm(r['infer_s_per_10k'], 4)} | {pm(r['time_vs_base'], 2)} |")
        purity = result["cluster_purity"].get(model)
        if purity:
            lines += ["", f"Cluster purity (test rows vs planted groups): {pm(purity, 3)}"]
            by_row = [f"{r['label']} {pm(r['cluster_purity'], 3)}" for r in table.values() if "cluster_purity" in r]
            lines += [f"By row: {'; '.join(by_row)}"] if by_row else []
        lines.append("")
    lines += ["## Per run", "", "| Model | Seed | Method dims / storage | Bundle: served bytes, max abs(served − offline) | Wall (s) |",
              "|---|---|---|---|---|"]
    for run in result["runs"]:
        b = run.get("bundle")
        check = f"{b['served_bytes']:,}, {b['max_abs_diff_served_vs_offline']:.1e}" if b else "-"
        lines.append(f"| {run['model']} | {run['seed']} | {run['summary']} | {check} | {run['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def summary_of(report: dict) -> str:
    """The method row's architecture in one cell: chosen storage (AutoDPQ) or dims per cluster."""
    if report.get("chosen") is not None:
        return ", ".join(f"{f} {k}×{d}" for f, (k, d) in report["chosen"].items()) or "all full"
    row = next(r for r in report["rows"] if r["kind"] == "method")
    return "; ".join(f"c{i}: " + " ".join(str(v) for v in dims.values()) for i, dims in enumerate(row["dims"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.jobs.tables", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python -m trainer.jobs.tables --config configs/ihas_ml100k.toml --out runs/ihas_seeds --seeds 0 1 2
  python -m trainer.jobs.tables --config configs/autodpq_ml100k.toml --out runs/adpq --models deepfm ipnn -- report.export=false""")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=None, help="base model types (default: the config's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--resume", action="store_true", help="reuse every finished stage of every run")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run (after `--`)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    models = args.models or [None]
    runs = [(m, s) for m in models for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(m, s): pool.submit(run_search_job, args.config, out / (m or "") / f"seed_{s}",
                                       [*([f"model.name={m}"] if m else []), f"train.seed={s}", *args.overrides], args.resume)
                   for m, s in runs}
        try:
            reports = {(m, s): f.result() for (m, s), f in futures.items()}
        except RuntimeError as e:  # one run failed: its own log holds the why
            print(f"error: {e}", file=sys.stderr)
            return 2
    first = reports[runs[0]]
    result = {
        "method": first["method"], "dataset": first["dataset"], "seeds": args.seeds,
        "tables": {}, "cluster_purity": {},
        "runs": [{"model": r["model"], "seed": s, "summary": summary_of(r), "bundle": r.get("bundle"),
                  "wall_seconds": r["wall_seconds"], "rows": r["rows"]} for (m, s), r in reports.items()],
    }
    for m in models:
        reps = [reports[m, s] for s in args.seeds]
        name = reps[0]["model"]
        result["tables"][name] = aggregate(reps)
        if all(r.get("cluster_purity") is not None for r in reps):
            result["cluster_purity"][name] = stats([r["cluster_purity"] for r in reps])
    write_json(out / "tables.json", result)
    md = markdown(result)
    (out / "tables.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
