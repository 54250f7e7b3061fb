"""The search recipe under torchrun: 2 processes reach the decisions of 1.

The supernet is replicated with its gradients averaged, so a 2-process search is the
1-process search up to float rounding, except where a method draws noise per row (iHAS's
Gumbel gates): each rank then draws for its own half of a batch, so a few rows land in
the other cluster. Compared: the dims and storage of every cluster (exact), Base and the
search-stage network (test AUC within 0.002, as for `trainer train`), the cluster sizes
(within 1% of the training rows) and, for one-cluster methods, the method's own row.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import read_toml
from trainer.decisions import Decisions

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs" / "tiny").glob("*.toml") if read_toml(p).get("search", {}).get("method"))


def _rows(report: dict) -> dict:
    return {r["method"]: r for r in report["rows"]}


def _tolerance(row: dict) -> float:
    """AUC gap allowed between the 1- and 2-process rows: 0.002 as for `trainer train`; the
    search-stage networks of AutoDim (each candidate) and AutoFIS / AIM (each interaction)
    batch-normalise over each rank's half batch (torch's SyncBatchNorm is CUDA-only), which
    on the tiny runs moved their AUC by 0.003-0.0035."""
    return 0.005 if row["method"] in ("autodim_supernet", "autofis_supernet", "aim_supernet") else 0.002


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_two_processes_reach_the_decisions_of_one(config, tiny_run, search_cmd, tmp_path):
    _, tmp, one_out, one = tiny_run(config.stem)
    out = tmp_path / "two"
    cmd = search_cmd(config, out, tmp / "cache")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run([*launcher, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    two = json.loads((out / "report.json").read_text())
    d1, d2 = (Decisions.from_json(json.loads((o / "decisions.json").read_text())) for o in (one_out, out))
    assert [(c.dims, {n: f.storage for n, f in c.fields.items()}) for c in d1.clusters] == \
           [(c.dims, {n: f.storage for n, f in c.fields.items()}) for c in d2.clusters]
    strip = lambda d: [(i.fields, i.function) for i in d.interactions or ()]  # noqa: E731
    assert strip(d1) == strip(d2)  # the kept interactions (AutoFIS, AIM) too
    # AutoFIS's retrain weights are its α, learned on terms batch-normalised over each
    # rank's half batch: close, not equal (0.0069 vs 0.0066 seen on the tiny run)
    w1, w2 = ([i.weight or 0.0 for i in d.interactions or ()] for d in (d1, d2))
    assert w2 == pytest.approx(w1, rel=0.15, abs=0.005)
    train_rows = sum(c.train_rows for c in d1.clusters)
    assert all(abs(a.train_rows - b.train_rows) <= 0.01 * train_rows for a, b in zip(d1.clusters, d2.clusters))
    r1, r2 = _rows(one), _rows(two)
    assert r1.keys() == r2.keys()
    compared = ["base"] + [k for k, r in r1.items() if r["kind"] == "supernet" or (r["kind"] == "method" and r["clusters"] == 1)]
    for key in compared:
        assert abs(r1[key]["test_auc"] - r2[key]["test_auc"]) <= _tolerance(r1[key]), (key, r1[key]["test_auc"], r2[key]["test_auc"])
    assert two["bundle"]["max_abs_diff_served_vs_offline"] < 1e-6


def test_holdout_autodpq_two_processes_reach_the_decisions_of_one(search_cmd, tmp_path):
    """The holdout schedule under torchrun: frozen weights, the gate rows cut across ranks,
    a codebook-only row and a row with nothing to train (Others)."""
    config = ROOT / "configs" / "tiny" / "autodpq_synthetic.toml"
    holdout = ["search.holdout=true", 'search.arch_split="gate"', "search.gate_fraction=0.5", "search.search_epochs=2",
               "search.arch_every=1", 'variants.baselines=["others"]',
               "report.plots=false"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    reports = []
    for name, prefix in (("one", [sys.executable]), ("two", launcher)):
        cmd = search_cmd(config, tmp_path / name, tmp_path / "cache")
        res = subprocess.run([*prefix, *cmd[1:], *holdout], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-4000:]
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    a1, a2 = (json.loads((tmp_path / o / "decisions.json").read_text())["details"]["alpha"] for o in ("one", "two"))
    # each rank batch-normalises the candidates over its half of a batch (SyncBatchNorm is
    # CUDA-only), so α's gradients differ slightly and an Adam step (± arch_lr = 0.01) may
    # flip sign: every α within one flipped step (0.02), and where 2 processes pick another
    # candidate than 1, that candidate was within 0.02 of the best for 1 process (a near tie)
    assert a1.keys() == a2.keys()
    for field, (x, y) in ((f, (a1[f], a2[f])) for f in a1):
        assert max(abs(u - v) for u, v in zip(x, y)) <= 0.02, (field, x, y)
        assert x[y.index(max(y))] >= max(x) - 0.02, (field, x, y)
    r1, r2 = (_rows(r) for r in reports)
    for key in ("base", "autodpq_supernet", "autodpq", "others"):
        assert r2[key]["test_auc"] == pytest.approx(r1[key]["test_auc"], abs=0.002), key
