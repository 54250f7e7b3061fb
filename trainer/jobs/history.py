"""A run's per-epoch history as a table and a figure: OUT/history.csv and OUT/history.png."""

from __future__ import annotations

import csv
from pathlib import Path

from trainer.figures import pyplot, save

COLUMNS = ("epoch", "train_loss", "val_auc", "val_logloss", "samples_per_s", "seconds")


def write_history(history: list[dict], out: Path) -> list[str]:
    """The CSV (one row per epoch) and a PNG of train loss and validation AUC / logloss."""
    table = out / "history.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    loss_ax.plot(epochs, [h["val_logloss"] for h in history], marker="o", label="validation logloss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    auc_ax.plot(epochs, [h["val_auc"] for h in history], marker="o", color="tab:green")
    auc_ax.set_xlabel("epoch")
    auc_ax.set_ylabel("validation AUC")
    return [str(table), save(fig, out / "history.png")]
