"""The search loop every method shares (trainer.search.interface.SearchMethod).

A method owns a *supernet* (an nn.Module mapping (dense, sparse) → logits) whose
parameters split into architecture parameters (gates, α, β, ...) and weights. The loop
is first-order DARTS-style alternation: weights step on training batches, architecture
steps on validation batches. Supernets never leave the trainer.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.data.batches import iterate_batches
from trainer.distributed import DistEnv, dense_optimizer, sparse_rows
from trainer.search.grda import GRDA
from trainer.search.interface import SearchMethod
from trainer.training import CTRTrain, Log, TrainConfig, evaluate, train_epoch

ARCH_SPLITS = ("val", "gate", "train")
ARCH_OPTIMIZERS = ("adam", "grda")
KEEP_BEST, KEEP_LAST = "best", "last"  # the values of SearchLoopConfig.keep


@dataclass
class SearchLoopConfig:
    """The alternating search schedule.

    Args:
        pretrain_epochs: epochs training the weights with the architecture fixed.
        search_epochs: maximum epochs of alternating search.
        arch_every: one architecture step on a validation batch every this many training batches.
        arch_lr: learning rate of the architecture parameters.
        arch_optimizer: "adam", or "grda" (sparse: closes gates with exact zeros; see
            trainer.search.grda) with threshold settings grda_c and grda_mu.
        patience: stop the search after this many epochs without a better validation AUC.
        keep: "best" ends the search in the state of its best validation epoch (early
            stopping); "last" runs all search_epochs and keeps the final state, as a DARTS
            search reads argmax α at the end (patience is then unused).
        arch_split: where architecture batches come from: "val" (the papers' bi-level
            schedule: the validation split, which also picks the search epoch) or "gate" (a
            split carved from train that only the architecture sees, so the split that
            selects epochs stays clean; the weights then train on the rest of train), or
            "train" (one-level: architecture and weights both learn from training batches,
            as AutoFIS and AIM train; validation only picks epochs).
        gate_fraction: share of train rows in the gate split (arch_split = "gate").
        pretrain_patience: 0 = pretrain exactly pretrain_epochs (the papers); n > 0 = stop
            pretraining after n epochs without a better validation AUC and go on from the
            best pretrained state.
        holdout: the one-pass schedule, for data where a second pass over the train rows
            memorises (million-id vocabularies trained for one epoch): the recipe's Base
            trains on train minus the gate split; the search keeps every weight of the
            Base frozen and trains only the architecture and the method's own search
            parameters (`search_parameters()`, e.g. AutoDPQ's codebooks) on the gate rows;
            rows that start from the method's weights train on the gate rows only, on local
            tables, what the method's `init_retrain` leaves trainable (AutoDPQ: the
            codebooks). No Base weight sees a row twice. Needs arch_split = "gate" and
            pretrain_epochs = 0.
    """

    pretrain_epochs: int = 5
    search_epochs: int = 10
    arch_every: int = 100
    arch_lr: float = 1e-3
    arch_optimizer: str = "adam"
    grda_c: float = 0.005
    grda_mu: float = 0.9
    patience: int = 2
    keep: str = KEEP_BEST
    arch_split: str = "val"
    gate_fraction: float = 0.1
    pretrain_patience: int = 0
    holdout: bool = False

    def validate(self) -> list[str]:
        p = []
        if self.arch_split not in ARCH_SPLITS:
            p.append(f"search.arch_split: must be one of {ARCH_SPLITS}, got {self.arch_split!r}")
        if self.arch_optimizer not in ARCH_OPTIMIZERS:
            p.append(f"search.arch_optimizer: must be one of {ARCH_OPTIMIZERS}, got {self.arch_optimizer!r}")
        if self.grda_c < 0 or self.grda_mu < 0:
            p.append(f"search.grda_c / grda_mu: must be >= 0, got {self.grda_c} / {self.grda_mu}")
        if not 0 < self.gate_fraction < 1:
            p.append(f"search.gate_fraction: must be in (0, 1), got {self.gate_fraction}")
        if self.pretrain_patience < 0:
            p.append(f"search.pretrain_patience: must be >= 0, got {self.pretrain_patience}")
        for key in ("search_epochs", "arch_every", "patience"):
            if getattr(self, key) < 1:
                p.append(f"search.{key}: must be >= 1, got {getattr(self, key)}")
        if self.pretrain_epochs < 0:
            p.append(f"search.pretrain_epochs: must be >= 0, got {self.pretrain_epochs}")
        if self.holdout and (self.arch_split != "gate" or self.pretrain_epochs):
            p.append(f"search.holdout: needs arch_split = 'gate' and pretrain_epochs = 0, got {self.arch_split!r} and "
                     f"{self.pretrain_epochs}")
        if not self.arch_lr > 0:
            p.append(f"search.arch_lr: must be > 0, got {self.arch_lr}")
        if self.keep not in (KEEP_BEST, KEEP_LAST):
            p.append(f"search.keep: must be 'best' or 'last', got {self.keep!r}")
        return p


def _arch_batches(ds, split: str, tcfg: TrainConfig, env: DistEnv):
    """This rank's slice of architecture batches forever, reshuffled on every pass."""
    for epoch in itertools.count():
        yield from iterate_batches(ds, split, tcfg.batch_size, shuffle=True, seed=tcfg.seed + 7919, epoch=epoch,
                                   rank=env.rank, world_size=env.world_size)


def gate_mask(n_train: int, fraction: float, seed: int) -> np.ndarray:
    """Which train rows (in split order) form the gate split: a seeded random share."""
    return np.random.default_rng((seed, 4099)).random(n_train) < fraction


class GateSplit:
    """Dataset view with a "gate" split carved from train (`gate_mask`); "train" keeps the
    rest (or, with `weights_on_gate`, is the gate rows too), the other splits are unchanged.

    Args:
        ds: the dataset.
        fraction: share of train rows in the gate split.
        seed: seed of the draw.
        weights_on_gate: "train" = the gate rows (the holdout search's parameters learn there).
    """

    def __init__(self, ds, fraction: float, seed: int, weights_on_gate: bool = False):
        self._ds = ds
        rows = ds.indices("train")
        gate = gate_mask(len(rows), fraction, seed)
        self._split = {"train": rows[gate] if weights_on_gate else rows[~gate], "gate": rows[gate]}

    def indices(self, split: str) -> np.ndarray:
        return self._split[split] if split in self._split else self._ds.indices(split)

    def __getattr__(self, name):
        return getattr(self._ds, name)


def run_search(method: SearchMethod, ds, loop: SearchLoopConfig, tcfg: TrainConfig, env: DistEnv, log: Log) -> dict:
    """Pretrain, then alternate weight / architecture steps until validation AUC stops improving
    (`loop.keep` = "best") or for all search_epochs ("last").

    The supernet trains on unsharded tables (Adam on everything, as the papers train);
    under torchrun every rank holds a replica, each batch (training and architecture) is
    cut across ranks and DDP averages every gradient, architecture parameters included,
    so the replicas stay equal. The supernet ends in the state of its best validation
    epoch, or its last.

    Returns:
        The history: per epoch phase, train loss, samples/s and validation AUC / logloss.
    """
    supernet = method.build()
    arch = method.arch_parameters()
    arch_ids = {id(p) for p in arch}
    weights = {n: p for n, p in supernet.named_parameters() if id(p) not in arch_ids}
    if loop.holdout:  # the Base's weights stay as trained: no gradient, no optimizer state
        own = {id(p) for p in method.search_parameters()}
        weights = {n: p for n, p in weights.items() if id(p) in own}
        for p in supernet.parameters():
            p.requires_grad_(id(p) in own or id(p) in arch_ids)
    train = CTRTrain(supernet)
    if env.world_size > 1:  # gates are unused while pretraining, weights unused by nothing else
        train = nn.parallel.DistributedDataParallel(train, find_unused_parameters=True)
    w_opt = dense_optimizer(weights, tcfg.lr, tcfg.weight_decay, sparse_rows(supernet))
    history = []
    if loop.arch_split == "gate":
        ds = GateSplit(ds, loop.gate_fraction, tcfg.seed, weights_on_gate=loop.holdout)
        if loop.holdout:
            log(f"holdout search on a gate split of {len(ds.indices('gate')):,} train rows the Base never saw: "
                f"architecture and {len(weights)} search parameters learn there, every other weight is frozen")
        else:
            log(f"architecture steps on a gate split of {len(ds.indices('gate')):,} train rows; weights on the other "
                f"{len(ds.indices('train')):,}; validation only picks epochs")

    method.set_phase("pretrain")
    best_pre, best_pre_state, best_pre_epoch = -1.0, None, -1
    for epoch in range(loop.pretrain_epochs):
        stats = train_epoch(train, w_opt, ds, tcfg, env, epoch, log)
        history.append({"phase": "pretrain", "epoch": epoch, **stats, **_val(method, train, ds, tcfg, env)})
        log(f"pretrain epoch {epoch} val auc {history[-1]['val_auc']:.4f}")
        if not loop.pretrain_patience:
            continue
        if history[-1]["val_auc"] > best_pre:
            best_pre, best_pre_epoch, best_pre_state = history[-1]["val_auc"], epoch, copy.deepcopy(supernet.state_dict())
        elif epoch - best_pre_epoch >= loop.pretrain_patience:
            break
    if best_pre_state is not None:
        supernet.load_state_dict(best_pre_state)
        log(f"pretraining: going on from epoch {best_pre_epoch} (val auc {best_pre:.4f})")

    method.init_architecture()
    method.set_phase("search")
    a_opt = (GRDA(arch, lr=loop.arch_lr, c=loop.grda_c, mu=loop.grda_mu) if loop.arch_optimizer == "grda"
             else torch.optim.Adam(arch, lr=loop.arch_lr))
    val_iter = _arch_batches(ds, loop.arch_split, tcfg, env)

    def arch_step(step: int) -> None:
        if (step + 1) % loop.arch_every:
            return
        bce, _ = train(next(val_iter).to(env.device))
        a_opt.zero_grad()
        method.arch_loss(bce).backward()
        a_opt.step()

    best, best_state, best_epoch = -1.0, None, -1
    for epoch in range(loop.search_epochs):
        stats = train_epoch(train, w_opt, ds, tcfg, env, loop.pretrain_epochs + epoch, log, on_step=arch_step)
        history.append({"phase": "search", "epoch": epoch, **stats, **_val(method, train, ds, tcfg, env)})
        auc = history[-1]["val_auc"]
        log(f"search epoch {epoch} val auc {auc:.4f} (deterministic architecture)")
        if auc > best:
            best, best_epoch, best_state = auc, epoch, copy.deepcopy(supernet.state_dict())
        elif epoch - best_epoch >= loop.patience and loop.keep == KEEP_BEST:
            break
    if loop.keep == KEEP_BEST:
        supernet.load_state_dict(best_state)
    method.set_phase("eval")
    log(f"search done: best epoch {best_epoch} val auc {best:.4f}; keeping the {loop.keep} state")
    return {"history": history, "best_epoch": best_epoch, "best_val_auc": best, "kept": loop.keep}


def _val(method: SearchMethod, train: nn.Module, ds, tcfg: TrainConfig, env: DistEnv) -> dict:
    """Validation metrics with the architecture made deterministic, then back to the phase."""
    phase = method.phase
    method.set_phase("eval")
    m = evaluate(train, ds, "val", tcfg, env)
    method.set_phase(phase)
    return {"val_auc": m["auc"], "val_logloss": m["logloss"]}
