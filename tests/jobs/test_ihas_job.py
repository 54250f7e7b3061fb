"""iHAS end to end on tiny synthetic data: stages, decisions, bundle reproduces in-memory scores."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ihas_search_job_end_to_end(tmp_path):
    out = tmp_path / "ihas"
    cmd = [sys.executable, "-m", "trainer", "search", "--config", str(ROOT / "configs/tiny/ihas_synthetic.toml"),
           "--out", str(out), f"data.cache_dir={tmp_path / 'cache'}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=900)
    report = json.loads((out / "report.json").read_text())
    decisions = json.loads((out / "decisions.json").read_text())
    assert len(decisions["clusters"]) == 2
    for c in decisions["clusters"]:
        assert set(c["dims"]) == set(decisions["fields"])
        assert all(0 <= d <= 8 and d == len(c["kept"][f]) for f, d in c["dims"].items())
    assert 0 <= report["ihas"]["cluster_purity"] <= 1
    assert 0.5 < report["ihas"]["test_auc"] <= 1 and 0.5 < report["base"]["test_auc"] <= 1
    assert report["bundle"]["max_abs_diff_1000_rows"] < 1e-6
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["bundle_version"] == report["bundle"]["version"]
    # resume reuses the search stage instead of retraining the supernet
    res = subprocess.run(cmd + ["--resume"], cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    assert "search: reusing" in res.stdout
