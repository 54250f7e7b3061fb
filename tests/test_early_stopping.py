"""Early stopping: the validation score that picks the epoch, and a floor on the epochs run."""

import pytest

from trainer import training
from trainer.training import TrainConfig, fit

# a small skewed split: AUC jumps around on a handful of positives while logloss keeps falling
AUC = [0.68, 0.63, 0.77, 0.73, 0.77, 0.70, 0.71, 0.69]
LOGLOSS = [0.60, 0.55, 0.50, 0.46, 0.43, 0.41, 0.42, 0.44]


@pytest.fixture
def scripted(monkeypatch):
    epochs = []
    monkeypatch.setattr(training, "train_epoch", lambda *a, **k: epochs.append(a[5]) or {"samples_per_s": 1.0})
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: {"auc": AUC[len(epochs) - 1], "logloss": LOGLOSS[len(epochs) - 1]})
    monkeypatch.setattr(training.checkpoint, "save", lambda *a, **k: None)
    restored = []
    monkeypatch.setattr(training.checkpoint, "load", lambda path, *a, **k: restored.append(str(path)))
    return epochs, restored


def _fit(tmp_path, **cfg):
    env = training.DistEnv(0, 1, None)
    return fit(None, None, None, TrainConfig(epochs=8, **cfg), env, tmp_path, log=lambda _: None)


def test_auc_stops_on_the_first_noisy_dip(scripted, tmp_path):
    epochs, restored = scripted
    result = _fit(tmp_path, patience=1)
    assert epochs == [0, 1] and result.best_epoch == 0 and restored[-1].endswith("epoch_0000")


def test_logloss_follows_the_falling_loss(scripted, tmp_path):
    epochs, _ = scripted
    result = _fit(tmp_path, patience=1, stop_on="logloss")
    assert epochs == [0, 1, 2, 3, 4, 5, 6] and result.best_epoch == 5 and result.best_val_auc == AUC[5]


def test_min_epochs_keeps_training_past_early_dips(scripted, tmp_path):
    epochs, _ = scripted
    result = _fit(tmp_path, patience=1, min_epochs=6)
    assert epochs == [0, 1, 2, 3, 4, 5] and result.best_epoch == 2  # the best AUC it saw, not the first dip


def test_a_one_class_validation_split_stops_on_logloss(scripted, tmp_path, monkeypatch):
    """A tiny cluster's validation rows may all be negatives: no AUC, the logloss decides."""
    epochs, _ = scripted
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: {"auc": None, "logloss": LOGLOSS[len(epochs) - 1]})
    result = _fit(tmp_path, patience=1)
    assert result.best_epoch == 5 and result.best_val_auc is None
