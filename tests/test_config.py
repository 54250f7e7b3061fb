import pytest

from trainer.config import ConfigError
from trainer.jobs.train import load_experiment


def test_every_mistake_reported_at_once(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        """
[data]
source = "movielens100k"
[model]
name = "transformer"
embedding_dim = "sixteen"
mlp = [400, -1]
[train]
epochs = 0
sharding = "row_wize"
typo_key = 1
[extra]
x = 1
"""
    )
    with pytest.raises(ConfigError) as err:
        load_experiment(str(cfg), [])
    msg = str(err.value)
    assert str(cfg) in msg
    for key in ("model.name", "model.embedding_dim", "model.mlp", "train.epochs", "train.sharding", "train.typo_key", "extra"):
        assert key in msg, key
    assert len(err.value.problems) >= 7


def test_overrides_apply_and_are_typed(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text('[data]\nsource = "movielens100k"\n[model]\nname = "fm"\n')
    exp = load_experiment(str(cfg), ["train.lr=0.01", "model.mlp=[8, 4]", "model.name=dcn"])
    assert exp.train.lr == 0.01 and exp.model.mlp == [8, 4] and exp.model.name == "dcn"
    with pytest.raises(ConfigError, match="train.lr"):
        load_experiment(str(cfg), ["train.lr=fast"])


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(str(bad), [])
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(str(tmp_path / "nope.toml"), [])
