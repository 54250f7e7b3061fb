"""AutoDPQ through the recipe on tiny synthetic data, per base model: decisions, baselines, bundle."""

import json
from pathlib import Path

import pytest

from trainer.decisions import Decisions

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "autodpq_synthetic.toml"
CANDIDATES = {(2, 2), (2, 4), (4, 2), (4, 4)}


def _check(out, report: dict, model: str, baselines: list[str]) -> None:
    decisions = Decisions.from_json(json.loads((out / "decisions.json").read_text()))
    coded = {n for n, s in report["split"].items() if s["n_low"] > 0}
    assert coded and report["model"] == model
    for name, f in decisions.clusters[0].fields.items():
        assert (f.storage.kind == "dpq") == (name in coded)
        if f.storage.kind == "dpq":
            assert (f.storage.k, f.storage.d) in CANDIDATES and f.storage.n_full == report["split"][name]["n_full"]
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"base", "autodpq_supernet", "autodpq", *baselines}
    # compressing the rare ids saves bytes whatever the (K, D) (the tiny grid is cheap)
    assert rows["autodpq"]["embedding_bytes"] < rows["base"]["embedding_bytes"]
    assert rows["autodpq"]["served_bytes"] < rows["base"]["served_bytes"]


def test_deepfm_with_every_baseline(tiny_run):
    _, _, out, report = tiny_run("autodpq_synthetic")
    _check(out, report, "deepfm", ["others", "grid", "random"])
    grid = next(r for r in report["rows"] if r["method"] == "grid")
    assert set(grid["candidates"]) == {"k2_d2", "k2_d4", "k4_d2", "k4_d4"} and grid["picked"] in grid["candidates"]
    assert max(c["val_auc"] for c in grid["candidates"].values()) == grid["val_auc"]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert any(t.get("derived", "").endswith(":dpq0") for t in manifest["clusters"][0]["tables"])


@pytest.mark.parametrize("model,storage,extra", [
    ("ipnn", "local", []), ("dcn", "sharded", ["model.raw_rows=sparse"]),
    ("deepfm", "sharded", ["model.raw_rows=sparse", "model.first_order_low=shared"]),
])
def test_other_models_and_storage_in_process(model, storage, extra, tmp_path):
    from trainer.jobs.search import load_experiment, run

    overrides = [f"model.name={model}", f"train.storage={storage}", *extra, 'variants.baselines=["others"]', "report.export=false",
                 "report.plots=false", f"data.cache_dir={tmp_path / 'cache'}"]
    report = run(load_experiment(str(CONFIG), overrides), tmp_path / model, log=lambda _: None)
    _check(tmp_path / model, report, model, ["others"])
    assert report["config"]["train"]["storage"] == storage


def test_sharded_training_starts_from_the_given_weights(toy_spec, toy_batch, dist_env):
    import numpy as np
    import torch

    from trainer.unshard import load_full_state
    from trainer.models.build import build_model
    from trainer.models.ctr import ModelConfig
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


def test_byte_aware_rows_choose_among_offered_candidates(tmp_path):
    from trainer.jobs.search import load_experiment, run

    overrides = ["variants.baselines=[]", "variants.size_weights=[0.0, 4.0]", "report.export=false", "report.plots=false",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    report = run(load_experiment(str(CONFIG), overrides), tmp_path / "out", log=lambda _: None)
    rows = {r["method"]: r for r in report["rows"]}
    assert {"autodpq_bytes_0", "autodpq_bytes_4"} <= set(rows)
    for name in ("autodpq_bytes_0", "autodpq_bytes_4"):
        decisions = Decisions.from_json(json.loads((tmp_path / "out" / "rows" / name / "decisions.json").read_text()))
        details = decisions.details
        kinds = [c["kind"] if c["kind"] != "dpq" else f"dpq K={c['k']} D={c['d']}" for c in details["candidates"]]
        assert kinds[:2] == ["full", "others"] and details["size_weight"] == float(name.rsplit("_", 1)[1])
        for field, storage in report["storage_by_row"][name].items():
            assert details["offered"][field][kinds.index(storage)]  # never a candidate the field was not offered
            assert sum(details["probs"][field][j] for j, ok in enumerate(details["offered"][field]) if not ok) == 0


def test_holdout_search_never_shows_a_weight_a_row_twice(tmp_path):
    """The one-pass schedule: Base trains outside the gate split, the search moves only α,
    codebooks and shared rows (every Base weight it copied stays as trained), and the rows
    that start from the Base train their codebooks alone on the gate rows."""
    import torch

    from trainer.jobs.search import load_experiment, run
    from trainer.search.loop import gate_mask

    overrides = ["search.holdout=true", 'search.arch_split="gate"', "search.arch_every=1", "model.first_order_low=shared",
                 'variants.baselines=["others"]', "variants.size_weights=[1.0]", "report.export=false", "report.plots=false",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    out = tmp_path / "run"
    report = run(load_experiment(str(CONFIG), overrides), out, log=lambda _: None)
    def train_rows(row: str) -> int:
        return json.loads((out / "rows" / row / "cluster_0" / "metrics.json").read_text())["train_rows"]

    gate = int(gate_mask(train_rows("base") + train_rows("autodpq"), 0.1, 0).sum())
    assert train_rows("base") > gate > 0
    assert train_rows("others") == train_rows("autodpq_bytes_1") == train_rows("autodpq") == gate

    base = torch.load(out / "rows" / "base" / "cluster_0" / "model.pt", weights_only=True)
    supernet = torch.load(out / "search" / "supernet.pt", weights_only=True)
    moved = [k for k in supernet if k.startswith(("embeddings.codebooks.", "embeddings.alphas."))]
    assert moved and any(supernet[k].abs().sum() > 0 for k in moved if "alphas" in k)
    head = [k for k in supernet if not k.startswith(("embeddings.", "linear."))]
    assert head
    for k in head:
        assert torch.equal(base[k], supernet[k]), k
    # the retrained rows train only their codebooks: the head is still the Base's
    for row in ("autodpq", "others"):
        model = torch.load(out / "rows" / row / "cluster_0" / "model.pt", weights_only=True)
        for k in head:
            assert torch.equal(base[k], model[k]), (row, k)
    for name, split in report["split"].items():
        if split["n_low"]:
            table = base[f"embeddings.ebc.embedding_bags.t_{name}.weight"]
            assert torch.equal(supernet[f"embeddings.raw.{name}.weight"], table[split["n_full"]:]), name
