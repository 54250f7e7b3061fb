"""OUT as a run directory: one run per OUT, resumed only with the config that started it.

`OUT/run.json` records the resolved config, the command line, the git commit, the
package versions and (once the data is loaded) the data fingerprint. A new run refuses an
OUT that already holds one unless `--overwrite` (which empties it first); `--resume`
refuses a config that differs in anything but RESUMABLE keys, naming every differing
key, and data whose fingerprint changed. OUT and its checkpoint directory are checked
for writability before any work. Rank 0 alone reads and writes; every rank calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, fields, is_dataclass
from importlib import metadata
from pathlib import Path

import torch.distributed as dist

from trainer.config import ConfigError
from trainer.distributed import DistEnv, broadcast
from trainer.jsonfile import write_json

RECORD = "run.json"
# Keys a resumed run may change: how long and how loudly it runs, where the cache lives,
# what it reports and which extra rows or frontier points it adds (each variant, scheme
# setting and seed trains in a directory of its own, and a nested search run checks its
# own config); never what shapes the model, the data or the optimizer.
RESUMABLE = ("train.epochs", "train.patience", "train.min_epochs", "train.log_every", "train.threads", "train.keep_checkpoints",
             "train.eval_batch_size", "data.cache_dir", "report.", "variants.", "frontier.schemes.", "frontier.scheme_configs.", "frontier.seeds",
             "frontier.infer_")
PACKAGES = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "numpy", "grpcio", "protobuf")


class RunDirError(ConfigError):
    """OUT cannot take this run (holds another one, differs on resume, not writable)."""


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def config_diff(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """Keys (section.key) whose values differ, except RESUMABLE ones and keys the old record
    lacks whose new value is their default (an option added since, left off: the run
    started with what that default does)."""
    a, b, d = _flat(old), _flat(new), _flat(defaults or {})
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not k.startswith(RESUMABLE) and not (k not in a and k in d and b[k] == d[k]))


def section_defaults(exp) -> dict:
    """Each dataclass section of `exp` at its class's defaults (as JSON values)."""
    out = {}
    for f in fields(exp):
        section = getattr(exp, f.name)
        if is_dataclass(section):
            try:
                out[f.name] = json.loads(json.dumps(asdict(type(section)()), default=str))
            except TypeError:  # a section without defaults for every field
                continue
    return out


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _check_writable(*dirs: Path) -> None:
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-probe-{os.getpid()}"
            probe.write_text("x")
            probe.unlink()
        except OSError as e:
            raise RunDirError(str(d), [f"not writable: {e.strerror or e}"]) from None


def open_run(out: Path, exp, *, resume: bool, overwrite: bool, holds: tuple[str, ...], env: DistEnv, log):
    """Make OUT this run's directory (see the module docstring); raises RunDirError.

    Args:
        holds: names in OUT whose presence means OUT holds a run.

    Returns:
        The run's log: `log` that also appends every line to OUT/run.log (rank 0).
    """
    problem = None
    if env.is_main:
        try:
            _open(out, exp, resume, overwrite, holds, log)
        except RunDirError as e:
            problem = (e.source, e.problems)
    problem = broadcast(problem, env)
    dist.barrier()
    if problem is not None:
        raise RunDirError(*problem)
    if not env.is_main:
        return log
    path = out / "run.log"

    def teed(line: str) -> None:
        log(line)
        with open(path, "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")

    teed(f"command: {' '.join(sys.argv)}")
    teed(f"config: {json.dumps(asdict(exp), default=str)}")
    return teed


def _open(out: Path, exp, resume: bool, overwrite: bool, holds: tuple[str, ...], log) -> None:
    config = json.loads(json.dumps(asdict(exp), default=str))
    record = out / RECORD
    present = [h for h in holds if (out / h).exists()]
    if resume and overwrite:
        raise RunDirError(str(out), ["--resume and --overwrite exclude each other"])
    if resume and record.exists():
        diff = config_diff(json.loads(record.read_text())["config"], config, section_defaults(exp))
        if diff:
            raise RunDirError(str(out), [f"--resume with a different {k}: the run in OUT was started with another value "
                                         "(start a new OUT, or --overwrite)" for k in diff])
    elif present and not resume:
        if not overwrite:
            raise RunDirError(str(out), [f"holds a run ({', '.join(present)}): --resume continues it, --overwrite replaces it"])
        log(f"--overwrite: emptying {out}")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    _check_writable(out, out / "checkpoints")
    previous = json.loads(record.read_text()) if resume and record.exists() else {}
    write_json(record, {**previous, "config": config, "argv": sys.argv, "commit": _commit(), "versions": _versions(),
                        "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
                        "resumed": previous.get("resumed", 0) + (1 if previous else 0)})
    log(f"run: {out} (config, command line, commit and versions in {record.name})")


def check_data(out: Path, fingerprint: str, env: DistEnv) -> None:
    """Record the data fingerprint, or refuse a resume whose data changed under the same config."""
    problem = None
    if env.is_main:
        record = out / RECORD
        run = json.loads(record.read_text())
        if run.get("data_fingerprint") not in (None, fingerprint):
            problem = [f"the data changed since the run started (fingerprint {run['data_fingerprint']} → {fingerprint})"]
        else:
            write_json(record, {**run, "data_fingerprint": fingerprint})
    problem = broadcast(problem, env)
    if problem:
        raise RunDirError(str(out), problem)
