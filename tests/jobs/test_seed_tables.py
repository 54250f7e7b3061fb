"""The per-seed table runner: mean ± sample std of every report row, for any method."""

from pathlib import Path

import pytest

from trainer.jobs import tables


def test_stats_is_mean_and_sample_std():
    s = tables.stats([0.78, 0.79, 0.80])
    assert s["mean"] == pytest.approx(0.79) and s["std"] == pytest.approx(0.01) and s["n"] == 3
    assert tables.stats([0.5])["std"] == 0.0
    assert tables.pm(s) == "0.7900 ± 0.0100"


def _row(name, kind, auc, params, retrain_s):
    return {"method": name, "label": name.upper(), "kind": kind, "test_auc": auc, "test_logloss": 1 - auc, "val_auc": auc,
            "embedding_params": params, "embedding_bytes": 4 * params, "served_bytes": 8 * params, "infer_s_per_10k": 0.01,
            "dims": [{"a": 2}], "seconds": {"search": 0.0, "retrain": retrain_s}}


def test_rows_are_aggregated_per_method_over_seeds(tmp_path, monkeypatch):
    reports = {}
    for seed, shift in enumerate([0.0, 0.01, 0.02]):
        reports[seed] = {"method": "m", "dataset": "d", "model": "mlp", "seed": seed, "cluster_purity": 0.9 + shift,
                         "rows": [_row("base", "baseline", 0.70 + shift, 100, 10.0), _row("m", "method", 0.72 + shift, 50, 30.0)],
                         "bundle": {"served_bytes": 400, "max_abs_diff_served_vs_offline": 0.0}, "wall_seconds": 5.0}
    monkeypatch.setattr(tables, "run_search_job", lambda config, out, overrides, resume: reports[int(overrides[-1][-1])])
    assert tables.main(["--config", "x.toml", "--out", str(tmp_path), "--seeds", "0", "1", "2"]) == 0
    md = (tmp_path / "tables.md").read_text()
    assert "| BASE | 0.7100 ± 0.0100 | 0.2900 ± 0.0100 | 100 | 400 | 800 |" in md
    assert "| M | 0.7300 ± 0.0100 | 0.2700 ± 0.0100 | 50 | 200 | 400 | 0.0100 ± 0.0000 | 3.00 ± 0.00 |" in md
    assert "Cluster purity (test rows vs planted groups): 0.910 ± 0.010" in md


def test_a_failed_run_exits_2_with_one_line_naming_its_log(tmp_path, capsys):
    from trainer.jobs.tables import main

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "autofis_synthetic.toml"
    assert main(["--config", str(config), "--out", str(tmp_path / "out"), "--seeds", "0", "--", "search.no_such_key=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "job.log" in err[0]
    assert "search.no_such_key" in (tmp_path / "out" / "seed_0" / "job.log").read_text()
