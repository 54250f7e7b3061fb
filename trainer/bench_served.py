"""Served cost of bundles side by side: scoring time on one thread and stored bytes.

    python -m trainer.bench_served --config configs/ihas_ml100k.toml \\
        --bundle base=runs/ihas_ml100k/bundles/base --bundle ihas=runs/ihas_ml100k/bundles/ihas \\
        --out runs/served_cost.json [--batch-sizes 4096 100] [--repeats 7]

Each bundle is loaded as the server loads it and scores the config's test rows through
`serving.predictor.Predictor.predict` (route, score each cluster's rows, merge; for a
routed bundle one program call), on one thread (`torch.set_num_threads(1)`), in batches of
each size (full batches only). Rows are encoded once beforehand, so the figure is model
work, not request decoding. Repeats are interleaved over bundles and batch sizes (bundle
A, bundle B, A, B, ...) so load on a shared machine hits them alike; the median pass
is reported, as milliseconds per batch, rows per second and the ratio to the first bundle
(`--baseline` picks another), with the share of rows each bundle routes to each cluster. Bytes are `serving.bundle.served_bytes`: every tensor the
bundle's programs hold to score a row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from serving.batch import FeatureBatch
from serving.bundle import BundleError, load_bundle, served_bytes
from serving.predictor import Predictor
from trainer.config import ConfigError
from trainer.data.batches import iterate_batches
from trainer.data.config import load_dataset
from trainer.jobs.search import load_experiment
from trainer.jsonfile import write_json


def parse_bundles(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--bundle {item!r}: expected NAME=DIR")
        if name in out:
            raise ValueError(f"--bundle {item!r}: name {name!r} given twice")
        out[name] = Path(path)
    return out


def test_batches(ds, size: int) -> list[FeatureBatch]:
    """The test split's full batches of `size` rows, encoded as the server encodes requests."""
    out = []
    for b in iterate_batches(ds, "test", size, shuffle=False, seed=0, epoch=0):
        if len(b.labels) == size:
            out.append(FeatureBatch.from_inputs(ds.spec, b.dense_features, b.sparse_features))
    if not out:
        raise ValueError(f"batch size {size}: the test split has only {len(ds.indices('test'))} rows")
    return out


def one_pass(predictor: Predictor, batches: list[FeatureBatch]) -> float:
    start = time.perf_counter()
    for b in batches:
        predictor.predict(b)
    return time.perf_counter() - start


def measure(predictors: dict[str, Predictor], batches: dict[int, list[FeatureBatch]], repeats: int) -> dict:
    """Median seconds of one pass per (bundle, batch size), repeats interleaved."""
    for p in predictors.values():  # warm-up: first calls allocate and fill caches
        for bs in batches.values():
            one_pass(p, bs[:2])
    times: dict[tuple[str, int], list[float]] = {(n, s): [] for n in predictors for s in batches}
    for _ in range(repeats):
        for s, bs in batches.items():
            for n, p in predictors.items():
                times[(n, s)].append(one_pass(p, bs))
    return {key: float(np.median(v)) for key, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the run's config (its data's test split is scored)")
    ap.add_argument("--bundle", action="append", required=True, help="NAME=DIR, two or more")
    ap.add_argument("--baseline", help="NAME of the bundle ratios refer to (default: the first)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 100])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", help="JSON file for the figures")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides of the config (e.g. data.cache_dir=...)")
    args = ap.parse_args(argv)
    try:
        bundles = parse_bundles(args.bundle)
        base = args.baseline or next(iter(bundles))
        if base not in bundles or args.repeats < 1 or min(args.batch_sizes) < 1:
            raise ValueError(f"--baseline {base!r} must name a --bundle, --repeats and --batch-sizes must be >= 1")
        exp = load_experiment(args.config, args.overrides)
        ds = load_dataset(exp.data, log=lambda _: None)
        predictors = {n: Predictor(load_bundle(p, dataset=ds.spec.dataset)) for n, p in bundles.items()}
        batches = {s: test_batches(ds, s) for s in args.batch_sizes}
        sizes = {n: served_bytes(p)["total"] for n, p in bundles.items()}
    except (ValueError, ConfigError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        medians = measure(predictors, batches, args.repeats)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for n in bundles:
        routed = np.concatenate([predictors[n].predict(b).clusters for b in batches[args.batch_sizes[0]]])
        shares = (np.bincount(routed, minlength=predictors[n].bundle.num_clusters) / len(routed)).round(4).tolist()
        row = {"bundle": n, "path": str(bundles[n]), "served_bytes": sizes[n], "bytes_ratio": sizes[n] / sizes[base],
               "cluster_shares": shares}
        for s, bs in batches.items():
            sec = medians[(n, s)]
            row[f"batch_{s}"] = {"ms_per_batch": 1e3 * sec / len(bs), "rows_per_s": s * len(bs) / sec,
                                 "time_ratio": sec / medians[(base, s)], "batches": len(bs)}
        rows.append(row)
    print(format_table(rows, args.batch_sizes, base))
    if args.out:
        write_json(Path(args.out), {"config": args.config, "baseline": base, "repeats": args.repeats, "threads": 1,
                                    "batch_sizes": args.batch_sizes, "rows": rows})
    return 0


def format_table(rows: list[dict], sizes: list[int], base: str) -> str:
    head = f"{'bundle':16} {'rows per cluster':>18} {'served bytes':>13} {'× ' + base:>8}"
    for s in sizes:
        head += f" {'ms/batch ' + str(s):>15} {'× ' + base:>8}"
    lines = [head]
    for r in rows:
        shares = "/".join(f"{x:.2f}" for x in r["cluster_shares"])
        line = f"{r['bundle'][:16]:16} {shares[:18]:>18} {r['served_bytes']:13,} {r['bytes_ratio']:8.2f}"
        for s in sizes:
            b = r[f"batch_{s}"]
            line += f" {b['ms_per_batch']:15.3f} {b['time_ratio']:8.2f}"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
