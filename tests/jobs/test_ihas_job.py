"""iHAS through the recipe on tiny synthetic data: decisions, ablations, transfer, warm variant, plots."""

import json
from pathlib import Path

from trainer.decisions import Decisions


def test_ihas_rows_decisions_and_plots(tiny_run):
    _, _, out, report = tiny_run("ihas_synthetic")
    decisions = Decisions.from_json(json.loads((out / "decisions.json").read_text()))
    assert len(decisions.clusters) == 2 and decisions.router is not None
    for c in decisions.clusters:
        assert all(0 <= f.dim <= 8 and f.dim == len(f.kept) for f in c.fields.values())
    assert 0 <= report["cluster_purity"] <= 1
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["base", "ihas_1", "ihas_2", "ihas_3", "ihas_4", "ihas_4_one_model", "ihas", "ihas_served",
                          "ihas_warm", "ihas_base_warm", "ihas_ids", "ihas_ids_shared", "ihas_ids_shared_base_warm",
                          "ihas_shared", "transfer_deepfm_base", "transfer_deepfm"]
    assert len(rows["ihas_served"]["guard"]) == 2
    fields = list(decisions.clusters[0].fields)
    # Base keeps every dim of every field; iHAS's params are what its cluster models hold
    assert rows["base"]["dims"] == [{f: 8 for f in fields}]
    assert rows["ihas"]["dims"] == [c.dims for c in decisions.clusters] == rows["ihas_warm"]["dims"] == rows["transfer_deepfm"]["dims"]
    assert rows["ihas"]["embedding_params"] == sum(c["embedding_params"] for c in rows["ihas"]["per_cluster"])
    # served bytes of a routed row count the router (search-stage tables + gates + centroids) on top of the cluster models
    assert rows["ihas"]["router_bytes"] > 0 and rows["ihas"]["served_bytes"] > rows["ihas"]["router_bytes"]
    # iHAS-2 is one model from the same search; iHAS-4's shared gates give every cluster the same dims
    assert rows["ihas_2"]["clusters"] == 1 and rows["ihas_4_one_model"]["clusters"] == 1
    assert rows["ihas_4"]["clusters"] == 2 and rows["ihas_4"]["dims"][0] == rows["ihas_4"]["dims"][1]
    for png in report["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shared_tables_row_serves_one_table_set(tiny_run):
    """iHAS-shared's bundle is one routed program: its tables are stored once and every
    cluster entry names that program; served == offline; bytes read from the bundle."""
    from serving.bundle import load_bundle, served_bytes
    from trainer.search.ihas.shared import union_columns

    config, tmp, out, report = tiny_run("ihas_synthetic")
    row = next(r for r in report["rows"] if r["method"] == "ihas_shared")
    check = report["bundles"]["ihas_shared"]
    assert check["max_abs_diff_served_vs_offline"] <= 1e-6 and check["rows_compared"] > 0
    size = served_bytes(check["path"])
    assert size["total"] == size["routed"] == row["served_bytes"] == check["served_bytes"] and size["router"] == 0
    bundle = load_bundle(check["path"])
    decisions = Decisions.from_json(bundle.metadata["decisions"])
    assert decisions.shared_tables and len(decisions.clusters) == 2
    assert {c.model for c in bundle.manifest.clusters} == {"routed.pt2"} and bundle.manifest.router is None
    assert bundle.dims == [c.dims for c in decisions.clusters]
    # one table per field some cluster keeps, each counted once, holding only kept columns
    tables = {k: v for k, v in size["tensors"].items() if "embedding_bags" in k.split(":", 1)[1].split(".")}
    kept = {f: cols for f, cols in union_columns(decisions).items() if cols}
    assert len(tables) == len(kept)
    assert sum(v[2] for v in tables.values()) == row["embedding_bytes"]
    assert all(v[1][1] == -(-len(kept[k.rsplit("t_", 1)[1].split(".")[0]]) // 4) * 4 for k, v in tables.items())


def test_ids_row_routes_by_its_own_mixture_and_serves_what_it_scored(tiny_run):
    """iHAS-ids: the same search, clustered by the id mixture; its bundle is one program
    holding the mixture (K floats per id, counted) and the cluster models, its purity is
    reported and served == offline."""
    from serving.bundle import served_bytes

    _, _, out, report = tiny_run("ihas_synthetic")
    rows = {r["method"]: r for r in report["rows"]}
    row, check = rows["ihas_ids"], report["bundles"]["ihas_ids"]
    decisions = Decisions.from_json(json.loads((out / "decisions.json").read_text()))
    assert row["clusters"] == 2 and 0 <= row["cluster_purity"] <= 1
    # the purity the tiny search reaches by ids (the planted groups are recoverable from them)
    assert row["cluster_purity"] > 0.9 and row["cluster_purity"] > report["cluster_purity"]
    assert check["max_abs_diff_served_vs_offline"] <= 1e-6 and check["rows_compared"] > 0
    size = served_bytes(check["path"])
    # one program: each cluster's own tables (c<k>_…), the router's K = 2 log-probabilities per
    # id of each field (m_…) and the K log priors, all counted in the bundle's bytes
    assert size["router"] == 0 and size["total"] == size["routed"] == row["served_bytes"]
    tables = {k.rsplit("embedding_bags.", 1)[1]: v for k, v in size["tensors"].items() if "embedding_bags" in k}
    mixture = {k: v for k, v in tables.items() if k.startswith("m_")}
    assert mixture and all(v[1][1] == 2 for v in mixture.values())
    assert {k.split("_", 1)[0] for k in tables} == {"c0", "c1", "m"}
    assert row["router_bytes"] == sum(v[2] for v in mixture.values()) + 2 * 4
    assert sum(v[2] for k, v in tables.items() if not k.startswith("m_")) == row["embedding_bytes"]
    assert decisions.router.features == "masked"  # the method itself still clusters as the paper does
    # iHAS-ids-shared: the mixture's log-probabilities ride in the shared tables after the kept
    # columns, so the routed program holds no router tables of its own
    shared, check = rows["ihas_ids_shared"], report["bundles"]["ihas_ids_shared"]
    assert check["max_abs_diff_served_vs_offline"] <= 1e-6 and shared["cluster_purity"] == row["cluster_purity"]
    size = served_bytes(check["path"])
    assert size["router"] == 0 and size["total"] == shared["served_bytes"] < row["served_bytes"]
    # started from Base instead of the supernet: the same architecture and routing, other weights
    warm = rows["ihas_ids_shared_base_warm"]
    assert warm["served_bytes"] == shared["served_bytes"] and warm["cluster_purity"] == shared["cluster_purity"]
    assert warm["test_auc"] != shared["test_auc"]


def test_a_routed_manifest_that_also_names_a_router_is_refused(tiny_run, tmp_path):
    import shutil

    import pytest

    from serving.bundle import BundleError, load_bundle

    _, _, out, _ = tiny_run("ihas_synthetic")
    copy = tmp_path / "b"
    shutil.copytree(out / "bundles" / "ihas_shared", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"router": "routed.pt2"}))
    with pytest.raises(BundleError, match="routed must be a file name that every cluster entry names"):
        load_bundle(copy)


def test_served_cost_benchmark_reads_bytes_from_the_bundles(tiny_run, tmp_path):
    import subprocess
    import sys

    config, tmp, out, report = tiny_run("ihas_synthetic")
    base, shared = out / "bundle", out / "bundles" / "ihas_shared"
    cmd = [sys.executable, "-m", "trainer.bench_served", "--config", str(config), "--bundle", f"base={base}",
           "--bundle", f"shared={shared}", "--batch-sizes", "100", "--repeats", "1", "--out", str(tmp_path / "c.json"),
           f"data.cache_dir={tmp / 'cache'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads((tmp_path / "c.json").read_text())
    rows = {r["bundle"]: r for r in got["rows"]}
    from serving.bundle import served_bytes

    assert rows["shared"]["served_bytes"] == served_bytes(shared)["total"]
    assert rows["shared"]["bytes_ratio"] == served_bytes(shared)["total"] / served_bytes(base)["total"]
    assert rows["base"]["batch_100"]["time_ratio"] == 1.0 and rows["shared"]["batch_100"]["batches"] >= 1
    bad = subprocess.run(cmd[:5] + ["--bundle", "nonsense"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "NAME=DIR" in bad.stderr
