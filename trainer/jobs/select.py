"""Pick one setting of a sparsity knob from a sweep of runs, on validation only.

    python -m trainer.jobs.select --row autofis --sweep 0.2=runs/c0.2 0.3=runs/c0.3 ... [--rule one_se]
        [--out runs/c_pick.json]

Each sweep point is a `trainer.jobs.tables` OUT (seed_<s>/report.json per training seed),
listed from the least to the most regularised setting (a larger GRDA c, a larger λ). Per
seed the rule reads the row's validation AUC at every point:
  * best: the point with the highest validation AUC;
  * one_se: the most regularised point whose validation AUC is within one standard error
    of the best one's (the one-standard-error rule: among models the validation split
    cannot tell apart, the sparsest). The standard error of an AUC is Hanley & McNeil's
    (1982), from the AUC and the validation split's clicks and non-clicks, read from the
    run's data cache.
Test figures and the planted-interaction scores of the picked point are reported beside
it; they play no part in the pick.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from trainer.jsonfile import write_json

RULES = ("best", "one_se")


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's standard error of an AUC estimated on `positives` + `negatives` rows."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def pick(val_aucs: list[float], rule: str, se: float) -> int:
    """Index of the picked point; `val_aucs` ordered from least to most regularised."""
    best = max(range(len(val_aucs)), key=val_aucs.__getitem__)
    if rule == "best":
        return best
    return max(i for i, a in enumerate(val_aucs) if a >= val_aucs[best] - se)


def val_counts(run: Path) -> tuple[int, int]:
    """(clicks, non-clicks) of the validation split of the run in `run` (its recorded data config)."""
    from trainer.data.config import DataConfig, load_dataset

    config = json.loads((run / "run.json").read_text())["config"]["data"]
    ds = load_dataset(DataConfig(**config), log=lambda _: None)
    y = ds.labels[ds.indices("val")]
    clicks = int(y.sum())
    return clicks, len(y) - clicks


def select(points: list[tuple[str, Path]], row: str, rule: str) -> dict:
    """Per training seed present in every point: the picked setting and its figures."""
    seeds = sorted(set.intersection(*({p.name for p in out.glob("seed_*")} for _, out in points)))
    if not seeds:
        raise ValueError("the sweep's OUTs share no seed_<s> run")
    counts = val_counts(points[0][1] / seeds[0])
    picks = []
    for seed in seeds:
        reports = [json.loads((out / seed / "report.json").read_text()) for _, out in points]
        rows = [next((r for r in rep["rows"] if r["method"] == row), None) for rep in reports]
        if any(r is None for r in rows):
            raise ValueError(f"row {row!r} is missing from a {seed} report")
        vals = [r["val_auc"] for r in rows]
        se = auc_standard_error(max(vals), *counts)
        i = pick(vals, rule, se)
        planted = reports[i].get("planted_by_row", {}).get(row)
        picks.append({"seed": int(seed.split("_")[1]), "setting": points[i][0], "val_auc_by_setting": dict(zip((s for s, _ in points), vals)),
                      "val_auc_se": se, "val_auc": vals[i], "test_auc": rows[i]["test_auc"], "test_logloss": rows[i]["test_logloss"],
                      "served_bytes": rows[i].get("served_bytes"), **({"planted": planted} if planted else {})})
    return {"row": row, "rule": rule, "settings": [s for s, _ in points], "val_clicks": counts[0], "val_non_clicks": counts[1],
            "picks": picks}


def markdown(result: dict) -> str:
    lines = [f"Row `{result['row']}`, rule `{result['rule']}` (validation: {result['val_clicks']:,} clicks, "
             f"{result['val_non_clicks']:,} non-clicks)", "",
             "| seed | val AUC per setting | SE | picked | val AUC | test AUC | planted: kept, precision, recall |", "|---|---|---|---|---|---|---|"]
    for p in result["picks"]:
        per = ", ".join(f"{s}: {a:.4f}" for s, a in p["val_auc_by_setting"].items())
        pl = p.get("planted")
        planted = f"{pl['kept']}, {pl['precision']:.2f}, {pl['recall']:.2f}" if pl else "-"
        lines.append(f"| {p['seed']} | {per} | {p['val_auc_se']:.4f} | {p['setting']} | {p['val_auc']:.4f} | "
                     f"{p['test_auc']:.4f} | {planted} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.jobs.select", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", required=True, help="report row to pick for (e.g. autofis)")
    parser.add_argument("--sweep", nargs="+", required=True, metavar="SETTING=OUT",
                        help="sweep points, least to most regularised")
    parser.add_argument("--rule", choices=RULES, default="one_se")
    parser.add_argument("--out", help="write the picks as JSON here too")
    args = parser.parse_args(argv)
    points = []
    for item in args.sweep:
        setting, sep, out = item.partition("=")
        if not sep or not Path(out).is_dir():
            print(f"error: --sweep {item!r}: need SETTING=OUT with OUT a directory", file=sys.stderr)
            return 2
        points.append((setting, Path(out)))
    try:
        result = select(points, args.row, args.rule)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        write_json(Path(args.out), result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
