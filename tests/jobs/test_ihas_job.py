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
                          "ihas_warm", "transfer_deepfm_base", "transfer_deepfm"]
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
