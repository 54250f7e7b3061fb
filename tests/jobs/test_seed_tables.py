"""Per-seed table runners: mean ± sample std and the table rows come from the seed reports."""

import pytest

from trainer.jobs import ihas_tables
from trainer.jobs.seeds import pm, stats


def test_stats_is_mean_and_sample_std():
    s = stats([0.78, 0.79, 0.80])
    assert s["mean"] == pytest.approx(0.79) and s["std"] == pytest.approx(0.01) and s["n"] == 3
    assert stats([0.5])["std"] == 0.0
    assert pm(s) == "0.7900 ± 0.0100"


def _row(auc, params):
    return {"test_auc": auc, "test_logloss": 1 - auc, "embedding_params": params, "seconds_per_10k_rows": 0.01,
            "dims": [{"a": 2}]}


def test_ihas_table_aggregates_every_method_and_transfer_model(tmp_path, monkeypatch):
    reports = []
    for seed, shift in enumerate([0.0, 0.01, 0.02]):
        methods = {k: _row(0.70 + shift + i / 100, 100 * (i + 1)) for i, k in enumerate(ihas_tables.NAMES)}
        methods["ihas"]["router_embedding_params"] = 999
        reports.append({"dataset": "d", "model": "mlp", "seed": seed, "methods": methods,
                        "transfer": {"fm": {"base": _row(0.6 + shift, 10), "ihas": _row(0.65 + shift, 20)}},
                        "search": {"seconds": 1.0}, "bundle": {}})
    monkeypatch.setattr(ihas_tables, "run_search_job", lambda config, out, overrides, resume: reports[int(overrides[0][-1])])
    assert ihas_tables.main(["--out", str(tmp_path), "--seeds", "0", "1", "2"]) == 0
    md = (tmp_path / "tables.md").read_text()
    assert "| Base | 0.7100 ± 0.0100 | 0.2900 ± 0.0100 | 100 |" in md
    assert "| iHAS | 0.7600 ± 0.0100 | 0.2400 ± 0.0100 | 600 |" in md
    assert "| fm | 0.6100 ± 0.0100 | 0.6600 ± 0.0100 |" in md
    assert "999 params" in md
