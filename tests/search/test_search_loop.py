"""The shared search loop: early stopping restores the best epoch; keep = "last" runs every epoch."""

import pytest
import torch

from trainer.config import ConfigError
from trainer.data.config import DataConfig, load_dataset
from trainer.models.ctr import ModelConfig
from trainer.search import loop as base
from trainer.search.interface import SearchContext
from trainer.search.ihas.method import IHAS, IHASConfig
from trainer.training import TrainConfig

FALLING = [0.80, 0.70, 0.60, 0.50]  # validation AUC per search epoch: never improves after epoch 0


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    cfg = DataConfig(source="synthetic", rows=3000, n_categorical=4, n_numerical=1, vocab_min=5, vocab_max=40, signal_fields_per_group=2,
                     cache_dir=str(tmp_path_factory.mktemp("cache")))
    return load_dataset(cfg, log=lambda _: None)


@pytest.mark.parametrize("keep, epochs_run, state_of_epoch", [("best", 2, 0), ("last", 4, 3)])
def test_keep_decides_which_state_the_search_ends_in(keep, epochs_run, state_of_epoch, ds, dist_env, monkeypatch):
    ctx = SearchContext.of(ds, ModelConfig(name="mlp", embedding_dim=4, mlp=[4]), TrainConfig(), None, dist_env, lambda _: None)
    method = IHAS(IHASConfig(pretrain_epochs=0, search_epochs=4, patience=1, arch_every=1, arch_lr=0.1, keep=keep), ctx)
    gates_after = []  # the gate parameters at the end of each search epoch

    def fake_val(method_, train, ds_, tcfg, env):
        gates_after.append([p.detach().clone() for p in method_.arch_parameters()])
        return {"val_auc": FALLING[len(gates_after) - 1], "val_logloss": 0.5}

    monkeypatch.setattr(base, "_val", fake_val)
    result = base.run_search(method, ds, method.cfg, TrainConfig(batch_size=256, lr=1e-2), dist_env, log=lambda _: None)
    assert len(result["history"]) == epochs_run and result["best_epoch"] == 0 and result["kept"] == keep
    assert not all(torch.equal(a, b) for a, b in zip(gates_after[0], gates_after[-1]))  # the gates did move
    for got, want in zip(method.arch_parameters(), gates_after[state_of_epoch]):
        assert torch.equal(got, want)


def test_unknown_keep_is_a_config_error(tmp_path):
    from trainer.jobs.search import load_experiment

    cfg = tmp_path / "x.toml"
    cfg.write_text('[model]\nname = "mlp"\n[search]\nmethod = "ihas"\nkeep = "first"\n')
    with pytest.raises(ConfigError, match="search.keep"):
        load_experiment(str(cfg), [])


def test_gate_split_is_carved_from_train_and_never_meets_model_selection(ds):
    view = base.GateSplit(ds, 0.2, seed=0)
    train, gate = set(view.indices("train").tolist()), set(view.indices("gate").tolist())
    assert not train & gate and train | gate == set(ds.indices("train").tolist())
    assert not gate & set(ds.indices("val").tolist()) and not gate & set(ds.indices("test").tolist())
    assert 0.15 < len(gate) / len(ds.indices("train")) < 0.25
    assert (view.indices("val") == ds.indices("val")).all()


def test_architecture_steps_read_the_gate_split_and_weights_never_do(ds, dist_env, monkeypatch):
    ctx = SearchContext.of(ds, ModelConfig(name="mlp", embedding_dim=4, mlp=[4]), TrainConfig(), None, dist_env, lambda _: None)
    method = IHAS(IHASConfig(pretrain_epochs=1, search_epochs=1, arch_every=1, arch_split="gate", gate_fraction=0.2), ctx)
    seen = []  # (split, rows) of every batch the loop asks for
    real = base.iterate_batches

    def spy(view, split, *a, **kw):
        for b in real(view, split, *a, **kw):
            seen.append((split, len(b.labels)))
            yield b

    monkeypatch.setattr(base, "iterate_batches", spy)
    monkeypatch.setattr("trainer.training.iterate_batches", spy)
    base.run_search(method, ds, method.cfg, TrainConfig(batch_size=256), dist_env, log=lambda _: None)
    splits = {s for s, _ in seen}
    assert "gate" in splits and splits <= {"train", "gate", "val"}
    gate_rows = len(base.GateSplit(ds, 0.2, seed=0).indices("gate"))
    train_rows = sum(n for s, n in seen if s == "train")
    assert train_rows == 2 * (len(ds.indices("train")) - gate_rows)  # pretrain + search epoch, gate rows held out


def test_pretraining_stops_at_its_validation_peak(ds, dist_env, monkeypatch):
    ctx = SearchContext.of(ds, ModelConfig(name="mlp", embedding_dim=4, mlp=[4]), TrainConfig(), None, dist_env, lambda _: None)
    method = IHAS(IHASConfig(pretrain_epochs=5, pretrain_patience=1, search_epochs=1), ctx)
    weights_after = []

    def fake_val(method_, train, ds_, tcfg, env):
        weights_after.append({k: v.clone() for k, v in method_.supernet.base.state_dict().items()})
        return {"val_auc": FALLING[min(len(weights_after) - 1, 3)], "val_logloss": 0.5}

    monkeypatch.setattr(base, "_val", fake_val)
    result = base.run_search(method, ds, method.cfg, TrainConfig(batch_size=256), dist_env, log=lambda _: None)
    assert [h["epoch"] for h in result["history"] if h["phase"] == "pretrain"] == [0, 1]  # peak at 0, patience 1
