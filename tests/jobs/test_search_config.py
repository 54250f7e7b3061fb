"""Search configs: every mistake, within a section or across sections, is one ConfigError at load."""

from pathlib import Path

import pytest

from trainer.config import ConfigError, read_toml
from trainer.jobs.search import load_experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config", sorted(str(p) for p in ROOT.glob("configs/**/*.toml") if "method" in p.read_text()))
def test_shipped_search_configs_load(config):
    assert load_experiment(config, []).search.method == read_toml(config)["search"]["method"]


def _errors(tmp_path, text: str) -> str:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_experiment(str(cfg), [])
    return str(err.value)


def test_autodpq_cross_section_mistakes_together(tmp_path):
    msg = _errors(tmp_path, '[data]\nsource = "synthetic"\n[model]\nname = "deepfm"\nembedding_dim = 16\nfirst_order_column = true\n'
                            'dims = {a = 6}\n[search]\nmethod = "autodpq"\nds = [2, 4]\n')
    assert "model.first_order_column" in msg and "D=4 vs dim 6" in msg and "data.min_count" in msg and "3 problem(s)" in msg


def test_ihas_cross_section_mistakes_together(tmp_path):
    msg = _errors(tmp_path, '[model]\nname = "deepfm"\ndims = {a = 4}\n[search]\nmethod = "ihas"\n[variants]\nwarm = true\n')
    assert "variants.warm" in msg and "model.dims" in msg and "2 problem(s)" in msg


def test_section_mistakes_name_the_method_sections(tmp_path):
    msg = _errors(tmp_path, '[search]\nmethod = "ihas"\nwarm_variant = true\n[variants]\nbaselines = ["others"]\n[report]\nexport = 1\n')
    assert "search.warm_variant: unknown key" in msg and "variants.baselines: unknown key" in msg and "report.export" in msg


def test_unknown_method(tmp_path):
    assert "search.method: 'autogroup'" in _errors(tmp_path, '[search]\nmethod = "autogroup"\n')


def test_autodim_mistakes_together(tmp_path):
    msg = _errors(tmp_path, '[search]\nmethod = "autodim"\ncandidates = [4, 4]\ncommon_dim = -1\nbn_scale = 0\nnoise = "rank"\n'
                            '[variants]\nrandom_draws = 0\nuniform_dims = [0]\nihas = {tau = 0}\n')
    for key in ("search.candidates", "search.common_dim", "search.bn_scale", "search.noise", "variants.random_draws", "variants.uniform_dims",
                "variants.ihas.tau"):
        assert key in msg
    assert "7 problem(s)" in msg
    assert "unknown iHAS keys ['warm']" in _errors(tmp_path, '[search]\nmethod = "autodim"\n[variants]\nihas = {warm = true}\n')


def test_holdout_needs_a_gate_split_and_search_parameters(tmp_path):
    msg = _errors(tmp_path, '[search]\nmethod = "autodpq"\nholdout = true\narch_split = "val"\npretrain_epochs = 1\n'
                            '[model]\nfirst_order_column = false\n')
    assert "search.holdout: needs arch_split = 'gate' and pretrain_epochs = 0" in msg and "1 problem(s)" in msg
    msg = _errors(tmp_path, '[search]\nmethod = "ihas"\nholdout = true\narch_split = "gate"\npretrain_epochs = 0\n')
    assert "search.holdout: ihas has no search parameters" in msg


def test_report_quantize_names_a_table_storage(tmp_path):
    msg = _errors(tmp_path, '[search]\nmethod = "ihas"\n[report]\nexport = false\nquantize = ["int3"]\n')
    assert "report.quantize: ['int3'] not in" in msg and "report.quantize: needs report.export = true" in msg
