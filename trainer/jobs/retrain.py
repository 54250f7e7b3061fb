"""Decisions → trained cluster models: the train stage every report row goes through.

Each cluster of a `Decisions` gets one model built from its decisions and trained on the
rows routed to it (all rows for one cluster) with the same `fit` that `trainer train`
uses (early stopping on validation AUC, a checkpoint per epoch). A finished cluster
(model.pt + val/test probabilities + metrics.json) is reused on resume. Under torchrun
every rank trains its shard of each batch and ends with the full model; rank 0 writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer.data.batches import iterate_batches
from trainer.data.view import RowSubset
from trainer.decisions import ClusterDecision, Decisions
from trainer.distributed import DistEnv, broadcast
from trainer.jobs.train import table_stats
from trainer.jsonfile import write_json
from trainer.metrics import summary
from trainer.models.build import build_model
from trainer.models.ctr import CTRModel, ModelConfig
from trainer.training import FitResult, Log, TrainConfig, TrainingError, evaluate, fit, predict, wrap
from trainer.unshard import load_full_state, unshard_into

SPLITS = ("train", "val", "test")
Init = Callable[[ClusterDecision, CTRModel], None]
Build = Callable[..., torch.nn.Module]  # (device=None) → a model


@dataclass
class Trained:
    """One decisions set retrained: a model per cluster and the scores merged in row order."""

    decisions: Decisions
    models: list[CTRModel]
    clusters: list[dict]
    metrics: dict  # test_auc, test_logloss, val_auc, val_logloss of the merged scores
    seconds: float
    probs: dict[str, np.ndarray]  # "val" / "test": the merged scores in row order


@torch.no_grad()
def route(router, ds, batch_size: int) -> dict[str, np.ndarray]:
    """Cluster id of every row of every split (all zeros without a router)."""
    out = {}
    for split in SPLITS:
        if router is None:
            out[split] = np.zeros(len(ds.indices(split)), dtype=np.int64)
            continue
        batches = iterate_batches(ds, split, batch_size, shuffle=False, seed=0, epoch=0)
        out[split] = np.concatenate([router(b.dense_features, b.sparse_features).numpy() for b in batches]).astype(np.int64)
    return out


def train_cluster(ds, assign: dict, cluster: ClusterDecision, model_cfg: ModelConfig, tcfg: TrainConfig, env: DistEnv,
                  out: Path, resume: bool, log: Log, init: Init | None = None, options: dict | None = None,
                  shared: dict | None = None, build: Build | None = None):
    """Train one cluster's model on its rows; returns (plain model, val probs, test probs, metrics).

    Args:
        init: fills a fresh CPU model in place (a method's warm start) instead of a fresh draw.
        options: the method's extra `build_model` keywords (e.g. the DPQ-SX temperature).
        shared: the decisions' build_model keywords common to every cluster (`Decisions.model_options`).
        build: builds the model on a device instead of `build_model` from the cluster's decisions.
    """
    kw = {"cluster": cluster, **(shared or {}), **(options or {})}
    build = build or (lambda device=None: build_model(ds.spec, model_cfg, device=device, **kw))
    files = out / "model.pt", out / "val_probs.npy", out / "test_probs.npy", out / "metrics.json"
    if resume and all(f.exists() for f in files):
        plain = build()
        plain.load_state_dict(torch.load(files[0], weights_only=True))
        log(f"retrain: reusing {out}")
        return plain.eval(), np.load(files[1]), np.load(files[2]), json.loads(files[3].read_text())
    c = cluster.id
    torch.manual_seed(tcfg.seed)
    view = RowSubset(ds, {s: assign[s] == c for s in SPLITS})
    sharded = tcfg.storage == "sharded"
    start = time.perf_counter()
    state = None
    if init is None and sharded:
        model = build(torch.device("meta"))
    else:
        model = build()
        if init is not None:
            init(cluster, model)
            if sharded:  # DMP draws fresh tables: the initial weights go back in after wrapping
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model = build(torch.device("meta"))
    stats = table_stats(model)
    train, opt = wrap(model, tcfg, env, log)
    if state is not None:
        load_full_state(train, state)
    if sharded or any(p.requires_grad for p in model.parameters()):
        result = fit(train, opt, view, tcfg, env, out / "checkpoints", log, resume=False)
    else:  # a warm start that froze every weight (e.g. a holdout AutoDPQ row of int8 / shared rows only)
        val = evaluate(train, view, "val", tcfg, env)
        result = FitResult(best_epoch=0, best_val_auc=val["auc"])
        log(f"nothing to train (every weight frozen): val auc {val['auc']:.4f} as initialised")
    val_probs, _ = predict(train, view, "val", tcfg, env)
    test_probs, labels = predict(train, view, "test", tcfg, env)
    plain = (unshard_into(train, build()) if sharded else model).eval()
    if sharded and env.world_size > 1:  # unshard_into fills rank 0's copy; every rank scores and warm-starts from it
        plain.load_state_dict(broadcast(plain.state_dict(), env))
    metrics = {"cluster": c, "model": model_cfg.name, "dims": cluster.dims, **stats,
               "embedding_layout_bytes": plain.embeddings.layout.embedding_bytes, "best_val_auc": result.best_val_auc,
               "best_epoch": result.best_epoch, "epochs": len(result.history), "seconds": time.perf_counter() - start,
               "train_rows": int((assign["train"] == c).sum()), "test_rows": len(labels), "samples_per_s": result.samples_per_s}
    if len(np.unique(labels)) == 2:
        metrics.update({f"test_{k}": v for k, v in summary(test_probs, labels).items()})
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(plain.state_dict(), files[0])
        np.save(files[1], val_probs)
        np.save(files[2], test_probs)
        write_json(files[3], metrics)
    return plain, val_probs, test_probs, metrics


def retrain(ds, decisions: Decisions, assign: dict, model_cfg: ModelConfig, tcfg: TrainConfig, env: DistEnv, out: Path,
            resume: bool, log: Log, init: Init | None = None, options: dict | None = None) -> Trained:
    """One model per cluster of `decisions` (OUT/cluster_<c>/), val and test scores merged in row order."""
    decisions.check_fields(ds.spec.names)
    merged = {s: np.zeros(len(ds.indices(s)), dtype=np.float32) for s in ("val", "test")}
    models, clusters, seconds = [], [], 0.0
    for c in decisions.clusters:
        if not (assign["train"] == c.id).any() or not any(c.dims.values()):
            raise TrainingError(f"{decisions.method}: cluster {c.id} has no training rows or keeps no embedding dims: "
                                "the search closed them all (iHAS: lower search.clusters or search.l0)")
        log(f"retrain {model_cfg.name} for {decisions.method} cluster {c.id} ({int((assign['train'] == c.id).sum())} train rows) → {out}")
        plain, val, test, metrics = train_cluster(ds, assign, c, model_cfg, tcfg, env, out / f"cluster_{c.id}", resume, log, init,
                                                     options, decisions.model_options())
        merged["val"][assign["val"] == c.id] = val
        merged["test"][assign["test"] == c.id] = test
        models.append(plain)
        clusters.append(metrics)
        seconds += metrics["seconds"]
    m = {}
    for s, probs in merged.items():
        labels = ds.labels[ds.indices(s)].astype(np.float32)
        m |= {f"{s}_{k}": v for k, v in summary(probs, labels).items()}
    return Trained(decisions, models, clusters, m, seconds, merged)


def retrain_shared(ds, decisions: Decisions, build: Build, model_cfg: ModelConfig, tcfg: TrainConfig, env: DistEnv,
                   out: Path, resume: bool, log: Log, init: Init) -> Trained:
    """One model whose router and cluster heads share one table set (`decisions.shared_tables`),
    trained on every row (OUT/shared/); it routes each row itself, so its scores are already
    merged."""
    decisions.check_fields(ds.spec.names)
    every = {s: np.zeros(len(ds.indices(s)), dtype=np.int64) for s in SPLITS}
    log(f"retrain {model_cfg.name} for {decisions.method}: {len(decisions.clusters)} cluster heads over one table set → {out}")
    plain, val, test, metrics = train_cluster(ds, every, decisions.clusters[0], model_cfg, tcfg, env, out / "shared", resume, log,
                                              init, build=build)
    probs = {"val": val, "test": test}
    m = {f"{s}_{k}": v for s, p in probs.items() for k, v in summary(p, ds.labels[ds.indices(s)].astype(np.float32)).items()}
    return Trained(decisions, [plain], [metrics], m, metrics["seconds"], probs)
