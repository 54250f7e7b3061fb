"""The iHAS paper's Table 4 (Base, iHAS-1…4, iHAS; iHAS-warm when configured) and its transfer table, over seeds.

    python -m trainer.jobs.ihas_tables --out runs/ihas_seeds [--config configs/ihas_ml100k.toml]
        [--seeds 0 1 2] [--jobs 1] [--resume] [section.key=value ...]

Each seed is one `python -m trainer search` run in OUT/seed_<s>/ with `train.seed=<s>`
(initialisation, batch order, Gumbel noise); the data split stays the config's. Writes
OUT/tables.json (every figure, per seed and aggregated) and OUT/tables.md (mean ± sample
std over seeds).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.jobs.ihas import NAMES
from trainer.jobs.seeds import pm, publish_tables, run_search_job, seeds_parser, stats

FIGURES = ("test_auc", "test_logloss", "embedding_params", "seconds_per_10k_rows")


def aggregate(rows: list[dict]) -> dict:
    return {k: stats([r[k] for r in rows]) for k in FIGURES}


def markdown(result: dict) -> str:
    t = result["methods"]
    lines = [
        f"# iHAS on {result['dataset']}, model {result['model']} (mean ± sample std over seeds {result['seeds']})",
        "",
        "Embedding params: the tables of the models that score (for iHAS, all cluster models; the router's "
        f"search-stage tables, {result['router_embedding_params']:,} params, come on top). Inference: seconds per 10k "
        "test rows on one thread (iHAS = router over all rows + each cluster model on its rows).",
        "",
        "| Method | test AUC ↑ | Logloss ↓ | Embedding params | s / 10k rows |",
        "|---|---|---|---|---|",
    ]
    for key, name in NAMES.items():
        if key in t:
            m = t[key]
            lines.append(f"| {name} | {pm(m['test_auc'])} | {pm(m['test_logloss'])} | {m['embedding_params']['mean']:,.0f} | "
                         f"{pm(m['seconds_per_10k_rows'], 3)} |")
    if result["transfer"]:
        lines += ["", "## Transfer: frozen gates' dims and router, other base models", "",
                  "| Model | Base AUC | iHAS AUC | Base logloss | iHAS logloss | Base params | iHAS params |", "|---|---|---|---|---|---|---|"]
        for name, tr in result["transfer"].items():
            b, i = tr["base"], tr["ihas"]
            lines.append(f"| {name} | {pm(b['test_auc'])} | {pm(i['test_auc'])} | {pm(b['test_logloss'])} | {pm(i['test_logloss'])} | "
                         f"{b['embedding_params']['mean']:,.0f} | {i['embedding_params']['mean']:,.0f} |")
    lines += ["", "## Dims per field per cluster (iHAS)", ""]
    for seed, dims in zip(result["seeds"], result["dims"]):
        lines.append(f"- seed {seed}: " + "; ".join(f"cluster {c}: " + ", ".join(f"{f} {d}" for f, d in cd.items())
                                                      for c, cd in enumerate(dims)))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = seeds_parser("python -m trainer.jobs.ihas_tables", __doc__, "configs/ihas_ml100k.toml")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_search_job, args.config, out / f"seed_{s}", [f"train.seed={s}", *args.overrides], args.resume)
                   for s in args.seeds]
        reports = [f.result() for f in futures]
    first = reports[0]
    result = {
        "dataset": first["dataset"],
        "model": first["model"],
        "seeds": args.seeds,
        "router_embedding_params": first["methods"]["ihas"]["router_embedding_params"],
        "methods": {k: aggregate([r["methods"][k] for r in reports]) for k in first["methods"]},
        "transfer": {m: {side: aggregate([r["transfer"][m][side] for r in reports]) for side in ("base", "ihas")}
                     for m in first["transfer"]},
        "dims": [r["methods"]["ihas"]["dims"] for r in reports],
        "search_seconds": stats([r["search"]["seconds"] for r in reports]),
        "reports": [{k: r[k] for k in ("seed", "methods", "transfer", "search", "bundle")} for r in reports],
    }
    publish_tables(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
