"""The export guard: a cluster model that scores worse than Base on its own cluster is not served.

A small or skewed cluster can end its retrain on a noisy validation epoch and score far
below Base; nothing else would notice, because the merged test AUC hides one bad
cluster among good ones. Per cluster, the guard compares the cluster model and Base on
the cluster's validation rows (AUC when they hold both classes, else logloss); a cluster
whose model loses is routed to Base: recorded as `served_by = "base"` in the decisions,
its rows scored by Base in the row's merged metrics, and logged as a warning. The row's
unguarded metrics stay in the report beside the guarded ones. When every cluster loses,
the recipe exports Base alone (no router, no copies).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from trainer.jobs.retrain import Trained
from trainer.metrics import summary
from trainer.training import Log


def cluster_score(probs: np.ndarray, labels: np.ndarray) -> tuple[str, float]:
    """(metric, higher-is-better value) on one cluster's rows."""
    if len(np.unique(labels)) == 2:
        return "auc", summary(probs, labels)["auc"]
    return "logloss", -summary(probs, labels)["logloss"]


def guard(trained: Trained, base: Trained, assign: dict, ds, log: Log) -> tuple[Trained, list[dict]]:
    """`trained` with every losing cluster served by Base (its model, scores and decision), and
    one check record per cluster."""
    labels = {s: ds.labels[ds.indices(s)].astype(np.float32) for s in ("val", "test")}
    checks, clusters = [], []
    probs = {s: p.copy() for s, p in trained.probs.items()}
    models = list(trained.models)
    for c in trained.decisions.clusters:
        rows = assign["val"] == c.id
        metric, own = cluster_score(trained.probs["val"][rows], labels["val"][rows])
        _, ref = cluster_score(base.probs["val"][rows], labels["val"][rows])
        lost = own < ref
        checks.append({"cluster": c.id, "metric": metric, "cluster_model": abs(own), "base": abs(ref),
                       "val_rows": int(rows.sum()), "served_by": "base" if lost else "self"})
        if lost:
            log(f"WARNING: cluster {c.id}'s model scores below Base on its {int(rows.sum())} validation rows "
                f"({metric} {abs(own):.4f} vs {abs(ref):.4f}): the bundle routes cluster {c.id} to the Base model")
            for s in probs:
                probs[s][assign[s] == c.id] = base.probs[s][assign[s] == c.id]
            models[c.id] = base.models[0]
        clusters.append(replace(c, served_by="base" if lost else "self"))
    metrics = {f"{s}_{k}": v for s in probs for k, v in summary(probs[s], labels[s]).items()}
    decisions = trained.decisions.replace(clusters=tuple(clusters))
    return replace(trained, decisions=decisions, models=models, metrics=metrics, probs=probs), checks


def collapse(trained: Trained, router, assign: dict, one: dict, log: Log) -> tuple[Trained, object, dict]:
    """(trained, router, row assignment) as served: Base alone, without a router, when the
    guard routed every cluster to Base (K copies of Base behind a router would only cost)."""
    if not all(c.served_by == "base" for c in trained.decisions.clusters):
        return trained, router, assign
    log("every cluster is served by Base: the bundle holds the Base model alone, without a router")
    return replace(trained, models=trained.models[:1]), None, one
