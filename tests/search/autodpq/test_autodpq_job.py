"""AutoDPQ end to end on tiny synthetic data, per base model: stages, decisions, report, bundle."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "tiny" / "autodpq_synthetic.toml"


def _check(out: Path, model: str, baselines: list[str]) -> dict:
    report = json.loads((out / "report.json").read_text())
    decisions = json.loads((out / "decisions.json").read_text())
    grid = [list(c) for c in decisions["candidates"]]
    coded = {n for n, s in report["split"].items() if s["n_low"] > 0}
    assert coded and report["model"] == model
    for name, f in decisions["fields"].items():
        assert (f["kind"] == "dpq") == (name in coded)
        if f["kind"] == "dpq":
            assert [f["k"], f["d"]] in grid and len(f["alpha"]) == len(grid)
    methods = report["methods"]
    assert set(methods) == {"fe", "autodpq", *baselines}
    for m in methods.values():
        assert 0.5 < m["test_auc"] <= 1 and m["test_logloss"] > 0
    # compressing the rare ids saves bytes whatever the (K, D) (the tiny grid is cheap)
    assert methods["autodpq"]["embedding_bytes"] < methods["fe"]["embedding_bytes"]
    return report


def test_search_cli_deepfm_with_baselines_and_bundle(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "search", "--config", str(CONFIG), "--out", str(out),
           f"data.cache_dir={tmp_path / 'cache'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    report = _check(out, "deepfm", ["others", "grid", "random"])
    assert set(report["methods"]["grid"]["runs"]) == {"k2_d2", "k2_d4", "k4_d2", "k4_d4"}
    bundle = report["bundle"]
    assert bundle["max_abs_diff_served_vs_trained"] < 1e-6
    assert bundle["relative_bytes_gap"] < 0.05
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["bundle_version"] == bundle["version"] and manifest["router"] is None
    assert any(t.get("derived", "").endswith(":dpq0") for t in manifest["clusters"][0]["tables"])
    # resume reuses every trained stage
    res = subprocess.run([*cmd[:-1], "--resume", cmd[-1], "search.export=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "search: reusing" in res.stdout and "retrain: reusing" in res.stdout


@pytest.mark.parametrize("model,storage", [("ipnn", "local"), ("dcn", "sharded")])
def test_search_in_process(model, storage, tmp_path):
    from trainer.jobs.autodpq import load_experiment, run

    overrides = [f"model.name={model}", f"train.storage={storage}", "search.baselines=[\"others\"]", "search.export=false",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    run(load_experiment(str(CONFIG), overrides), tmp_path / model, log=lambda _: None)
    report = _check(tmp_path / model, model, ["others"])
    assert report["config"]["train"]["storage"] == storage


def test_sharded_training_starts_from_the_given_weights(toy_spec, toy_batch, dist_env):
    import numpy as np
    import torch

    from trainer.unshard import load_full_state
    from trainer.models.ctr import ModelConfig, build_model
    from trainer.models.build import build_model
    from trainer.models.layout import OTHERS, dpq, plan_layout
    from trainer.search.autodpq.method import load_pretrained
    from trainer.training import TrainConfig, wrap

    counts = {"a": np.array([0, 50, 40, 30, 5, 3, 2, 1]), "n": np.array([0, 90, 20, 9, 1]),
              "g": np.array([0, 30, 5, 2]), "c": np.array([0, 70, 60])}
    layout = plan_layout(toy_spec, counts, {n: 8 for n in toy_spec.names}, 10, {"a": dpq(4, 2), "g": dpq(2, 2), "n": OTHERS})
    cfg = ModelConfig(name="deepfm", embedding_dim=8, mlp=[8])
    fe = build_model(toy_spec, cfg)
    for table in fe.embeddings.ebc.embedding_bags.values():
        torch.nn.init.normal_(table.weight)
    model = build_model(toy_spec, cfg, layout=layout)
    load_pretrained(model, fe, seed=0)
    with torch.no_grad():
        want = model.eval()(toy_batch.dense_features, toy_batch.sparse_features)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train, _ = wrap(model, TrainConfig(storage="sharded"), dist_env, log=lambda _: None)
    load_full_state(train, state)
    with torch.no_grad():
        got = train.eval()(toy_batch)[1][1]
    assert torch.allclose(got, want, atol=1e-6)
