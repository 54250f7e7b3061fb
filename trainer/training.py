"""The training loop shared by every job: epochs, validation, early stopping, checkpoints.

The model is always driven through `CTRTrain`, whose forward returns
`(loss, (loss, logits, labels))`, so DMP can wrap it and jobs can read what they need.
Each global batch is cut across ranks (see trainer.data.batches), every rank's loss is
the mean over its slice; DDP averages dense gradients, while TorchRec sums table
gradients over ranks, so under `torchrun` the table gradients are world_size× those of a
1-process run. The fused optimizers we use on tables (row-wise Adagrad, Adagrad) are
invariant to that scale up to eps, which is why a 2-process run matches a 1-process one;
fused SGD is not, so scale its learning rate down by world_size when you change ranks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer import checkpoint
from trainer.data.batches import iterate_batches, num_batches
from trainer.distributed import FUSED_OPTIMIZERS, SHARDING_TYPES, DistEnv, combined_optimizer, shard
from trainer.metrics import logloss, summary

Log = Callable[[str], None]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss): a user-facing error with one clear line."""


@dataclass
class TrainConfig:
    """How to train.

    Args:
        epochs: maximum epochs.
        batch_size: global batch size (split across ranks).
        eval_batch_size: global batch size for validation/test scoring.
        lr: Adam learning rate of the dense (non-table) parameters.
        weight_decay: Adam weight decay of the dense parameters.
        storage: "sharded" (DMP, FBGEMM fused table optimizer) or "local" (plain EBC, tables
            trained by the dense Adam too; one process only).
        sharding: table_wise | column_wise | data_parallel (row_wise is GPU-only).
        embedding_optimizer: fused table optimizer: rowwise_adagrad | adagrad | sgd | adam (GPU).
        embedding_lr: learning rate of the fused table optimizer.
        patience: stop after this many epochs without a better validation score.
        stop_on: the validation score that picks the epoch and stops early: "auc", or
            "logloss" (smoother on a small or skewed validation split, where AUC moves
            with a handful of positives).
        min_epochs: never stop early before this many epochs.
        keep_checkpoints: keep only the newest N epoch checkpoints (and the best one);
            0 keeps every epoch.
        seed: seed of parameter init, data order and dropout.
        log_every: progress line every this many steps.
        threads: torch intra-op threads per process (0 = leave torch's default).
    """

    epochs: int = 10
    batch_size: int = 2048
    eval_batch_size: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.0
    storage: str = "sharded"
    sharding: str = "table_wise"
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.05
    patience: int = 2
    stop_on: str = "auc"
    min_epochs: int = 0
    keep_checkpoints: int = 0
    seed: int = 0
    log_every: int = 100
    threads: int = 0

    def validate(self) -> list[str]:
        p = []
        for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, key) <= 0:
                p.append(f"train.{key}: must be > 0, got {getattr(self, key)}")
        if self.storage not in ("sharded", "local"):
            p.append(f"train.storage: {self.storage!r} is not 'sharded' or 'local'")
        if self.sharding not in SHARDING_TYPES:
            p.append(f"train.sharding: {self.sharding!r} is not one of {sorted(SHARDING_TYPES)}")
        if self.embedding_optimizer not in FUSED_OPTIMIZERS:
            p.append(f"train.embedding_optimizer: {self.embedding_optimizer!r} is not one of {sorted(FUSED_OPTIMIZERS)}")
        for key in ("lr", "embedding_lr"):
            if not getattr(self, key) > 0:
                p.append(f"train.{key}: must be > 0, got {getattr(self, key)}")
        if self.patience < 1:
            p.append(f"train.patience: must be >= 1, got {self.patience}")
        if self.stop_on not in ("auc", "logloss"):
            p.append(f"train.stop_on: must be 'auc' or 'logloss', got {self.stop_on!r}")
        for key in ("min_epochs", "seed", "threads", "keep_checkpoints"):
            if getattr(self, key) < 0:
                p.append(f"train.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("lr", "embedding_lr", "weight_decay"):
            if not math.isfinite(getattr(self, key)):
                p.append(f"train.{key}: must be finite, got {getattr(self, key)}")
        return p


class CTRTrain(nn.Module):
    """Training wrapper: batch → (loss, (loss, logits, labels)).

    Args:
        model: a CTR model mapping (dense, sparse) → logits.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


def wrap(model: nn.Module, cfg: TrainConfig, env: DistEnv, log: Log):
    """CTRTrain(model) sharded per `cfg` + its optimizer. `model` must be on meta for DMP."""
    train = CTRTrain(model)
    if cfg.storage == "sharded":
        train = shard(
            train, env, sharding=cfg.sharding, optimizer=cfg.embedding_optimizer, lr=cfg.embedding_lr, seed=cfg.seed, log=log
        )
    elif env.world_size > 1 and any(p.requires_grad for p in model.parameters()):  # frozen: no gradient to average
        train = nn.parallel.DistributedDataParallel(train)
    return train, combined_optimizer(train, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _gather(local: np.ndarray, env: DistEnv) -> np.ndarray:
    if env.world_size == 1:
        return local
    parts: list = [None] * env.world_size
    dist.all_gather_object(parts, local)
    return np.concatenate(parts)


@torch.no_grad()
def predict(train: nn.Module, ds, split: str, cfg: TrainConfig, env: DistEnv) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of a whole split, gathered on every rank."""
    train.eval()
    probs, labels = [], []
    for batch in iterate_batches(
        ds, split, cfg.eval_batch_size, shuffle=False, seed=cfg.seed, epoch=0, rank=env.rank, world_size=env.world_size
    ):
        _, (_, logits, y) = train(batch.to(env.device))
        probs.append(torch.sigmoid(logits).cpu().numpy())
        labels.append(y.cpu().numpy())
    train.train()
    return _gather(np.concatenate(probs), env), _gather(np.concatenate(labels), env)


def evaluate(train: nn.Module, ds, split: str, cfg: TrainConfig, env: DistEnv) -> dict[str, float | None]:
    """AUC and logloss of a split; AUC is None when the split holds one class (a small cluster's)."""
    probs, labels = predict(train, ds, split, cfg, env)
    if len(np.unique(labels)) < 2:
        return {"auc": None, "logloss": logloss(probs, labels)}
    return summary(probs, labels)


def train_epoch(train, optimizer, ds, cfg: TrainConfig, env: DistEnv, epoch: int, log: Log, on_step=None) -> dict:
    """One pass over the train split; returns loss and throughput of the epoch.

    Args:
        on_step: optional callable(step) run after every optimizer step (e.g. a search
            method's architecture update on a validation batch).
    """
    train.train()
    total = num_batches(ds, "train", cfg.batch_size, env.world_size)
    start = time.perf_counter()
    rows = 0
    loss_sum = 0.0
    for step, batch in enumerate(
        iterate_batches(
            ds, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, rank=env.rank, world_size=env.world_size
        )
    ):
        loss, _ = train(batch.to(env.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step)
        rows += batch.labels.shape[0] * env.world_size
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"training loss is {value} at epoch {epoch} step {step + 1}: lower train.lr / "
                                "train.embedding_lr, or check the data for extreme values")
        loss_sum += value
        if env.is_main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (total - step - 1)
            log(
                f"epoch {epoch} step {step + 1}/{total} loss {loss_sum / (step + 1):.4f} "
                f"{rows / elapsed:,.0f} samples/s eta {eta:.0f}s"
            )
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum / max(total, 1), "samples_per_s": rows / elapsed, "seconds": elapsed}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float | None = -math.inf  # None when the validation split holds one class
    best_score: float = -math.inf  # of cfg.stop_on, higher is better
    samples_per_s: float = 0.0


def fit(train, optimizer, ds, cfg: TrainConfig, env: DistEnv, ckpt_dir: str | Path, log: Log, resume=False) -> FitResult:
    """Train with early stopping on the validation score (`cfg.stop_on`); checkpoint every
    epoch; end on the best.

    Args:
        ckpt_dir: checkpoint root (DIR/epoch_NNNN + DIR/LATEST).
        resume: continue from the newest complete checkpoint in ckpt_dir, if any.
    """
    result = FitResult()
    start_epoch = 0
    last = checkpoint.latest(ckpt_dir) if resume else None
    if last is not None:
        progress = checkpoint.load(last, train, optimizer, env.rank)
        result = FitResult(**progress["fit"])
        start_epoch = progress["epoch"] + 1
        if env.is_main:
            log(f"resumed from {last} (next epoch {start_epoch})")
    for epoch in range(start_epoch, cfg.epochs):
        if epoch - result.best_epoch > cfg.patience and result.best_epoch >= 0 and epoch >= cfg.min_epochs:
            break
        stats = train_epoch(train, optimizer, ds, cfg, env, epoch, log)
        val = evaluate(train, ds, "val", cfg, env)
        # a one-class validation split has no AUC: its logloss decides
        score = val["auc"] if cfg.stop_on == "auc" and val["auc"] is not None else -val["logloss"]
        improved = score > result.best_score
        if improved:
            result.best_epoch, result.best_score, result.best_val_auc = epoch, score, val["auc"]
        result.history.append({"epoch": epoch, **stats, "val_auc": val["auc"], "val_logloss": val["logloss"]})
        speeds = [h["samples_per_s"] for h in result.history]
        result.samples_per_s = float(np.median(speeds))
        if env.is_main:
            auc = "n/a (one class)" if val["auc"] is None else f"{val['auc']:.4f}"
            log(f"epoch {epoch} val auc {auc} logloss {val['logloss']:.4f}{' (best)' if improved else ''}")
        checkpoint.save(ckpt_dir, epoch, train, optimizer, {"epoch": epoch, "fit": result.__dict__}, env.rank)
        if env.is_main and cfg.keep_checkpoints:
            checkpoint.prune(ckpt_dir, cfg.keep_checkpoints, result.best_epoch)
    if result.best_epoch >= 0 and result.best_epoch != result.history[-1]["epoch"]:
        checkpoint.load(Path(ckpt_dir) / f"epoch_{result.best_epoch:04d}", train, None, env.rank)
        if env.is_main:
            log(f"restored best epoch {result.best_epoch} (val score {result.best_score:.4f}, {cfg.stop_on})")
    return result
