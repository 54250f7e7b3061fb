"""Every registered search method runs through the one recipe on its tiny config.

Adding a method and its configs/tiny/*.toml makes it run here with no change to this file:
decisions survive a JSON round trip, the bundle serves the offline scores and holds the
bytes the report states, the report has one schema, and a run killed between stages
resumes to the same report.
"""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from trainer.config import read_toml
from trainer.decisions import Decisions
from trainer.search.registry import METHODS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs" / "tiny").glob("*.toml") if read_toml(p).get("search", {}).get("method"))
ROW_KEYS = {"method", "label", "kind", "test_auc", "test_logloss", "val_auc", "embedding_params", "embedding_bytes",
            "served_bytes", "served_table_bytes", "infer_s_per_10k", "clusters", "seconds"}
COMPARED = ("test_auc", "test_logloss", "val_auc", "embedding_params", "served_bytes")


@pytest.fixture(params=CONFIGS, ids=lambda p: p.stem)
def run(request, tiny_run):
    return tiny_run(request.param.stem)


def test_every_registered_method_has_a_tiny_config():
    assert {read_toml(p)["search"]["method"] for p in CONFIGS} == set(METHODS)


def test_decisions_round_trip_and_travel_in_the_bundle(run):
    _, _, out, report = run
    raw = json.loads((out / "decisions.json").read_text())
    decisions = Decisions.from_json(raw)
    assert decisions.to_json() == raw and decisions.method == report["method"]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["metadata"]["decisions"] == raw
    if all(c.served_by == "base" for c in decisions.clusters):  # the guard found no cluster model worth serving
        assert len(manifest["clusters"]) == 1 and manifest["router"] is None
    else:
        assert len(manifest["clusters"]) == len(decisions.clusters)
        assert (manifest["router"] is None) == (decisions.router is None)


def test_report_rows_share_one_schema(run):
    _, _, _, report = run
    rows = report["rows"]
    assert [r["kind"] for r in rows].count("method") == 1 and rows[0]["method"] == "base"
    assert len({r["method"] for r in rows}) == len(rows)
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert 0.5 < r["test_auc"] <= 1 and r["test_logloss"] > 0 and r["infer_s_per_10k"] > 0
        assert r["served_bytes"] >= r["served_table_bytes"] > 0


def test_bundle_serves_offline_scores_and_holds_the_reported_bytes(run):
    from serving.bundle import served_bytes

    _, _, out, report = run
    bundle = report["bundle"]
    assert bundle["max_abs_diff_served_vs_offline"] < 1e-6  # batch-shape rounding is ~1e-7
    kinds = {r["kind"]: r for r in report["rows"]}
    exported = kinds.get("served", kinds["method"])  # a clustered method's row after the export guard
    # the report's figure (from the in-memory served modules) is what the bundle's files hold
    assert served_bytes(out / "bundle")["total"] == bundle["served_bytes"] == exported["served_bytes"]


def test_a_run_killed_between_stages_resumes_to_the_same_report(run, search_cmd):
    config, tmp, _, report = run
    out = tmp / "killed"
    cmd = search_cmd(config, out, tmp / "cache")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (out / "decisions.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()
    res = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    searches = getattr(METHODS[read_toml(config)["search"]["method"]], "searches", True)
    assert ("search: reusing" in res.stdout or not searches) and "retrain: reusing" in res.stdout
    again = json.loads((out / "report.json").read_text())
    assert [{k: r[k] for k in COMPARED} for r in again["rows"]] == [{k: r[k] for k in COMPARED} for r in report["rows"]]
