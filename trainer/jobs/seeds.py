"""Repeated runs of a search job over seeds: launch one run, summarise a figure over seeds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from trainer.jobs.train import write_json


def run_search_job(config: str, out: Path, overrides: list[str], resume: bool) -> dict:
    """`python -m trainer search` in a subprocess (a failed run cannot take the others down);
    its output goes to OUT/job.log. Returns OUT/report.json plus `wall_seconds`, the
    subprocess's wall-clock (with --resume: only what was not reused)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "trainer", "search", "--config", config, "--out", str(out),
           *(["--resume"] if resume else []), *overrides]
    start = time.perf_counter()
    with open(out / "job.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}); see {out / 'job.log'}")
    return {**json.loads((out / "report.json").read_text()), "wall_seconds": time.perf_counter() - start}


def publish_tables(out: Path, result: dict, markdown: str) -> None:
    """OUT/tables.json (every figure) and OUT/tables.md (the tables), echoed to stdout."""
    write_json(out / "tables.json", result)
    (out / "tables.md").write_text(markdown)
    print(markdown)


def stats(values: list[float]) -> dict:
    """Mean, sample std (ddof 1) and the values themselves."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a), "values": a.tolist()}


def pm(s: dict, digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def seeds_parser(prog: str, doc: str, config: str) -> argparse.ArgumentParser:
    """Command line shared by the per-seed table runners."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=config)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--resume", action="store_true", help="reuse every finished stage of every run")
    parser.add_argument("overrides", nargs="*",
                        help="section.key=value for every run (after `--` when they follow a list option such as --seeds)")
    return parser
