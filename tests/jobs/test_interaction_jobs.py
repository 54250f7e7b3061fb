"""AutoFIS and AIM end to end: the bundle's program computes only the kept interactions,
and the report scores them against the planted ones."""

import json
import shutil
import subprocess
from pathlib import Path

from serving.bundle.verify import load_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_the_served_program_holds_only_the_kept_pairs(tiny_run):
    _, _, out, report = tiny_run("autofis_synthetic")
    decisions = json.loads((out / "decisions.json").read_text())
    kept = decisions["interactions"]
    assert 0 < len(kept) < decisions["details"]["searched"]  # the tiny search closes some gates, not all
    program = load_bundle(out / "bundle").models[0]
    index = dict(program.named_buffers())["pair_index"]
    fields = list(decisions["clusters"][0]["fields"])  # model field order = the spec's
    assert index.shape == (2, len(kept))
    assert [[fields[i], fields[j]] for i, j in index.T.tolist()] == [i["fields"] for i in kept]
    assert report["interactions"]["kept"] == len(kept)
    assert report["planted"]["planted"] == 2 and report["planted"]["kept"] == len(kept)
    # every searched row is scored against the planted pairs, the labelled centred search too
    assert report["planted_by_row"]["autofis"] == report["planted"]
    centred = report["planted_by_row"]["autofis_centred"]
    assert centred["planted"] == 2 and 0 <= centred["precision"] <= 1
    assert "autofis_centred" in {r["method"] for r in report["rows"]}


def test_the_served_aim_program_holds_only_the_kept_interactions(tiny_run):
    _, _, out, report = tiny_run("aim_synthetic")
    decisions = json.loads((out / "decisions.json").read_text())
    kept = decisions["interactions"]
    assert decisions["interaction_model"] == "aim" and kept
    program = load_bundle(out / "bundle").models[0]
    buffers = dict(program.named_buffers())
    indexes = [v for k, v in buffers.items() if k.endswith(".index")]
    assert sum(i.shape[1] for i in indexes) == len(kept)  # one column per kept interaction, no other candidates
    by_order = sorted(len(i["fields"]) for i in kept)
    assert sorted(n for i in indexes for n in [i.shape[0]] * i.shape[1]) == by_order
    stages = report["aim"]["aim"]
    assert stages["kept"] == len(kept)
    order3, pool = stages["candidates_by_order"].get("order 3", [0, 1])
    assert order3 < pool  # Algorithm 1's pool, not every triple
    # the labelled centred search is its own row, scored against the planted interactions too
    assert "aim_centred" in {r["method"] for r in report["rows"]}
    assert set(report["aim"]["aim_centred"]["planted"]) == set(stages["planted"]) == {"2", "3"}


def test_a_resumed_run_adds_a_variant_row_and_reuses_the_finished_ones(tiny_run, search_cmd, tmp_path):
    config, tmp, out, report = tiny_run("autofis_synthetic")
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    searched = (copy / "search" / "search.json").stat().st_mtime_ns
    res = subprocess.run(search_cmd(config, copy, tmp / "cache") + ["--resume", "variants.gate_split=true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    again = json.loads((copy / "report.json").read_text())
    rows = {r["method"]: r for r in again["rows"]}
    assert set(rows) == {r["method"] for r in report["rows"]} | {"autofis_gate_split"}
    for r in report["rows"]:  # every finished row is read back, not retrained
        assert rows[r["method"]]["test_auc"] == r["test_auc"]
    assert (copy / "search" / "search.json").stat().st_mtime_ns == searched
