"""The AutoDPQ paper's Tables 1 and 2 on our data: runs the search job per model and seed, aggregates.

    python -m trainer.jobs.autodpq_tables --out runs/autodpq_tables [--config configs/autodpq_ml100k.toml]
        [--seeds 0 1 2] [--models deepfm ipnn dcn] [--jobs 1] [--resume] [section.key=value ...]

Each (model, seed) is one `python -m trainer search` run in OUT/<model>/seed_<s>/ (a
subprocess, so `--jobs` runs can overlap and a failed run does not take the others down;
`--resume` reuses finished stages). The first model gets every baseline (Table 1: FE,
Others, Grid, Random, AutoDPQ); the others get Others and Random (Table 2). Seeds vary
`train.seed` (initialisation, batch order, Gumbel noise, the Random draw); the data split
stays the config's. Writes OUT/tables.json (every figure, per seed and aggregated) and
OUT/tables.md (mean ± sample std over seeds).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.jobs.seeds import pm, publish_tables, run_search_job, seeds_parser, stats

TABLE1 = ["fe", "others", "grid", "random", "autodpq"]
TABLE2 = ["others", "random", "autodpq"]
NAMES = {"fe": "FE", "others": "Others", "grid": "Grid", "random": "Random", "autodpq": "AutoDPQ"}


def run_one(config: str, out: Path, model: str, seed: int, baselines: list[str], resume: bool, overrides: list[str]) -> dict:
    return run_search_job(config, out, [f"model.name={model}", f"train.seed={seed}", f"search.baselines={json.dumps(baselines)}",
                                        *overrides], resume)


def aggregate(reports: list[dict], methods: list[str]) -> dict:
    out = {}
    for name in methods:
        rows = [r["methods"][name] for r in reports]
        out[name] = {
            "test_auc": stats([m["test_auc"] for m in rows]),
            "test_logloss": stats([m["test_logloss"] for m in rows]),
            "embedding_bytes": stats([m["embedding_bytes"] for m in rows]),
            "embedding_params": stats([m["embedding_params"] for m in rows]),
            "seconds": stats([m["seconds"] for m in rows]),
            "time_vs_fe": stats([r["seconds_relative_to_fe"][name] for r in reports]),
        }
    auto = [r["seconds_relative_to_fe"] for r in reports]
    out["autodpq"]["search_only_vs_fe"] = stats([a["autodpq_search_only"] for a in auto])
    out["autodpq"]["with_pretrain_vs_fe"] = stats([a["autodpq_with_pretrain"] for a in auto])
    return out


def _bytes(s: dict) -> str:
    return f"{s['mean'] / 1000:.1f}k ± {s['std'] / 1000:.1f}k"


def markdown(result: dict) -> str:
    first = result["models"][0]
    t1 = result["tables"][first]
    seeds = result["seeds"]
    lines = [
        f"# AutoDPQ on {result['dataset']} (threshold {result['threshold']}; mean ± sample std over seeds {seeds})",
        "",
        f"Coded (low-frequency) ids: {result['coded_ids']} of {result['total_ids']} "
        f"({100 * result['coded_ids'] / result['total_ids']:.1f}%). Embedding bytes = what the served model stores for the "
        "second-order embeddings (rows × stored width × 4 + codes + centroid tables); DeepFM's first-order weights "
        "(never compressed) are not included. Time = seconds of the method's own stages / seconds of one FE training "
        "(every compressed method also starts from that FE model).",
        "",
        f"## Table 1: search strategies, {first}",
        "",
        "| | " + " | ".join(NAMES[m] for m in TABLE1) + " |",
        "|---|" + "---|" * len(TABLE1),
        "| AUC ↑ | " + " | ".join(pm(t1[m]["test_auc"]) for m in TABLE1) + " |",
        "| Logloss ↓ | " + " | ".join(pm(t1[m]["test_logloss"]) for m in TABLE1) + " |",
        "| Embedding bytes ↓ | " + " | ".join(_bytes(t1[m]["embedding_bytes"]) for m in TABLE1) + " |",
        "| Time (× FE) | " + " | ".join(pm(t1[m]["time_vs_fe"], 2) for m in TABLE1) + " |",
        "",
        f"AutoDPQ search stage alone: {pm(t1['autodpq']['search_only_vs_fe'], 2)} × FE; pretrain + search + retrain: "
        f"{pm(t1['autodpq']['with_pretrain_vs_fe'], 2)} × FE.",
        "",
        "## Table 2: compatibility",
        "",
        "| Model | Metric | " + " | ".join(NAMES[m] for m in TABLE2) + " |",
        "|---|---|" + "---|" * len(TABLE2),
    ]
    for model in result["models"]:
        t = result["tables"][model]
        lines += [
            f"| {model} | AUC ↑ | " + " | ".join(pm(t[m]["test_auc"]) for m in TABLE2) + " |",
            "| | Logloss ↓ | " + " | ".join(pm(t[m]["test_logloss"]) for m in TABLE2) + " |",
            "| | Embedding bytes ↓ | " + " | ".join(_bytes(t[m]["embedding_bytes"]) for m in TABLE2) + " |",
        ]
    lines += ["", "## Chosen (K, D) per field and bundle checks", "",
              "| Model | Seed | Chosen (K, D) | Bundle embedding bytes / reported | max abs(served − trained) | Wall (s) |",
              "|---|---|---|---|---|---|"]
    for model in result["models"]:
        for seed, r in zip(seeds, result["reports"][model]):
            chosen = ", ".join(f"{f} {kd[0]}×{kd[1]}" for f, kd in r["decisions"].items() if kd)
            b = r.get("bundle")
            check = f"{b['embedding_bytes_in_bundle']:,} / {b['embedding_bytes_reported']:,}" if b else "-"
            diff = f"{b['max_abs_diff_served_vs_trained']:.1e}" if b else "-"
            wall = f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else "-"
            lines.append(f"| {model} | {seed} | {chosen} | {check} | {diff} | {wall} |")
    c = result.get("bundle_checks")
    if c and c["bundles"]:
        lines += ["", f"Bundle checks over {c['bundles']} bundles: largest relative gap between bundle and report embedding "
                  f"bytes {c['max_relative_bytes_gap']:.2%} (within 5%: {c['all_within_5pct']}); largest abs(served − offline) "
                  f"probability {c['max_abs_diff_served_vs_trained']:.1e} (< 1e-6: {c['all_served_equal_offline_1e-6']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = seeds_parser("python -m trainer.jobs.autodpq_tables", __doc__, "configs/autodpq_ml100k.toml")
    parser.add_argument("--models", nargs="+", default=["deepfm", "ipnn", "dcn"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(m, s, ["others", "grid", "random"] if i == 0 else ["others", "random"])
            for i, m in enumerate(args.models) for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(m, s): pool.submit(run_one, args.config, out / m / f"seed_{s}", m, s, b, args.resume, args.overrides)
                   for m, s, b in runs}
        reports = {m: [futures[m, s].result() for s in args.seeds] for m in args.models}
    first = reports[args.models[0]][0]
    result = {
        "dataset": first["dataset"],
        "threshold": first["threshold"],
        "coded_ids": sum(s["n_low"] for s in first["split"].values()),
        "total_ids": sum(s["num_embeddings"] for s in first["split"].values()),
        "seeds": args.seeds,
        "models": args.models,
        "tables": {m: aggregate(reports[m], TABLE1 if i == 0 else TABLE2) for i, m in enumerate(args.models)},
        "reports": {m: [{k: r[k] for k in ("seed", "methods", "seconds_relative_to_fe", "decisions", "bundle", "search", "wall_seconds") if k in r}
                        for r in reports[m]] for m in args.models},
    }
    bundles = [r["bundle"] for m in args.models for r in reports[m] if r.get("bundle")]
    result["bundle_checks"] = {
        "bundles": len(bundles),
        "max_relative_bytes_gap": max((b["relative_bytes_gap"] for b in bundles), default=None),
        "max_abs_diff_served_vs_trained": max((b["max_abs_diff_served_vs_trained"] for b in bundles), default=None),
        "all_within_5pct": all(b["relative_bytes_gap"] < 0.05 for b in bundles),
        "all_served_equal_offline_1e-6": all(b["max_abs_diff_served_vs_trained"] < 1e-6 for b in bundles),
    }
    publish_tables(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
