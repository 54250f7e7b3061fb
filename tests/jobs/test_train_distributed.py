"""The train job under torchrun: 2 processes match 1, and a killed run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny" / "deepfm_synthetic.toml"


def _cmd(out: Path, cache: Path, nproc: int, *overrides: str, resume=False) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    return [*launcher, "-m", "trainer", "train", "--config", str(CONFIG), "--out", str(out),
            *(["--resume"] if resume else []), f"data.cache_dir={cache}", *overrides]


def _run(*args, **kw) -> dict:
    out = args[0]
    done = subprocess.run(_cmd(*args, **kw), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache):
    return _run(tmp_path_factory.mktemp("one"), cache, 1)


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_two_processes_match_one(single, sharding, tmp_path, cache):
    two = _run(tmp_path, cache, 2, f"train.sharding={sharding}")
    assert two["world_size"] == 2
    assert abs(two["test_auc"] - single["test_auc"]) <= 0.002, (two["test_auc"], single["test_auc"])
    assert abs(two["test_logloss"] - single["test_logloss"]) <= 0.002


def test_first_order_column_two_processes_match_one(tmp_path, cache):
    """Column-wise shards split the 20-wide tables, first-order column included."""
    col = "model.first_order_column=true"
    one = _run(tmp_path / "one", cache, 1, col)
    two = _run(tmp_path / "two", cache, 2, col, "train.sharding=column_wise")
    assert abs(two["test_auc"] - one["test_auc"]) <= 0.002, (two["test_auc"], one["test_auc"])
    assert abs(two["test_logloss"] - one["test_logloss"]) <= 0.002


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_run_resumes_to_the_same_metrics(tmp_path, cache):
    epochs = ["train.epochs=4", "train.patience=4", "data.rows=60000"]
    full = _run(tmp_path / "full", cache, 2, *epochs)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(out, cache, 2, *epochs), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pointer = out / "checkpoints" / "LATEST"
    deadline = time.time() + 300
    while not pointer.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # torchrun starts each rank in a session of its own: killing the launcher's group alone
    # would leave both ranks running on (and racing the resumed run for its checkpoints)
    ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while any(_alive(pid) for pid in ranks) and time.time() < deadline:
        time.sleep(0.05)
    assert len(ranks) == 2 and not any(_alive(pid) for pid in ranks), ranks
    assert pointer.exists() and not (out / "metrics.json").exists(), "the run was not interrupted after epoch 1"
    resumed = _run(out, cache, 2, *epochs, resume=True)
    assert resumed["best_epoch"] == full["best_epoch"]
    for key in ("test_auc", "test_logloss", "val_auc"):
        assert abs(resumed[key] - full[key]) < 1e-4, (key, resumed[key], full[key])


def test_a_killed_worker_restarts_and_the_run_ends_as_if_uninterrupted(tmp_path, cache):
    """scripts/torchrun with --max-restarts: a worker killed mid-run is restarted with its peer,
    both resume from the last complete checkpoint, and the final metrics are those of an
    uninterrupted run."""
    epochs = ["train.epochs=4", "train.patience=4", "data.rows=60000"]
    full = _run(tmp_path / "full", cache, 2, *epochs)
    out = tmp_path / "restarted"
    launcher = [str(ROOT / "scripts" / "torchrun"), "--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    cmd = [*launcher, *_cmd(out, cache, 1, *epochs)[1:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pointer = out / "checkpoints" / "LATEST"
    deadline = time.time() + 300
    while not pointer.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)  # one worker, after the first checkpoint
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from" in output
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["best_epoch"] == full["best_epoch"]
    for key in ("test_auc", "test_logloss", "val_auc"):
        assert abs(resumed[key] - full[key]) < 1e-4, (key, resumed[key], full[key])
