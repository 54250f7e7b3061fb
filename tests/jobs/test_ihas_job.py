"""iHAS end to end on tiny synthetic data: stages, ablations, transfer, plots, bundle, resume."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ihas_search_job_end_to_end(tmp_path):
    out = tmp_path / "ihas"
    cmd = [sys.executable, "-m", "trainer", "search", "--config", str(ROOT / "configs/tiny/ihas_synthetic.toml"),
           "--out", str(out), f"data.cache_dir={tmp_path / 'cache'}", 'search.transfer_models=["deepfm"]']
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    decisions = json.loads((out / "decisions.json").read_text())
    assert len(decisions["clusters"]) == 2
    for c in decisions["clusters"]:
        assert set(c["dims"]) == set(decisions["fields"])
        assert all(0 <= d <= 8 and d == len(c["kept"][f]) for f, d in c["dims"].items())
    assert 0 <= report["cluster_purity"] <= 1
    methods = report["methods"]
    assert set(methods) == {"base", "ihas_1", "ihas_2", "ihas_3", "ihas_4", "ihas", "ihas_warm"}
    assert methods["ihas_warm"]["dims"] == methods["ihas"]["dims"]
    for m in methods.values():
        assert 0.5 < m["test_auc"] <= 1 and m["test_logloss"] > 0 and m["seconds_per_10k_rows"] > 0
    # Base keeps every dim of every field; iHAS's params are what its cluster models hold.
    assert methods["base"]["dims"] == [{f: 8 for f in decisions["fields"]}]
    assert methods["ihas"]["dims"] == [c["dims"] for c in decisions["clusters"]]
    assert methods["ihas"]["embedding_params"] == sum(c["embedding_params"] for c in methods["ihas"]["clusters"])
    # iHAS-4's shared gates give every row the same mask: one cluster, one model
    assert len(json.loads((out / "ablations/ihas_4/decisions.json").read_text())["clusters"]) == 1
    assert len(json.loads((out / "ablations/ihas_2/decisions.json").read_text())["clusters"]) == 1
    assert set(report["transfer"]) == {"deepfm"} and report["transfer"]["deepfm"]["ihas"]["dims"] == methods["ihas"]["dims"]
    for png in report["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["bundle"]["max_abs_diff_1000_rows"] < 1e-6
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["bundle_version"] == report["bundle"]["version"]
    # resume reuses every search and every retrained model, and reports the same figures
    res = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("search: reusing") == 3 and "retrain: reusing" in res.stdout and "epoch 0 step" not in res.stdout
    again = json.loads((out / "report.json").read_text())
    assert {k: v["test_auc"] for k, v in again["methods"].items()} == {k: v["test_auc"] for k, v in methods.items()}
