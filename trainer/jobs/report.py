"""One report schema for every search method: `rows`, one per Base / method / variant
(plus, for a clustered method, the row as served after the export guard: kind "served").

Every row has at least: method (the row's key), label, kind, test_auc, test_logloss,
val_auc, val_logloss, embedding_params (scoring models' tables + first-order weights +
the meta-, scalar and missing embeddings of fields embedded from their value, router
excluded, as the papers count), embedding_bytes (stored embedding tables, codes and
those embeddings of the scoring models), served_bytes (every tensor the served modules hold to
score a row: router tables and gates, cluster models' tables, codes, centroids,
first-order weights, padding and dense layers), served_table_bytes (the part of
served_bytes that is not dense layers), infer_s_per_10k (one thread), clusters and the
wall seconds of each stage that produced it (`seconds`: search, retrain).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from trainer.data.batches import iterate_batches
from trainer.data.view import RowSubset
from trainer.jobs.retrain import Trained
from trainer.models.build import served_form

# state-dict names of per-id storage: TorchRec tables (embeddings, first-order weights,
# DPQ centroids), DPQ codes, the training form's raw rows and codebooks, and the stored
# embeddings of numerical fields embedded from their value (AutoDis meta-embeddings, ...)
TABLE_MARKERS = ("embedding_bags.", "codes_", ".raw.", "codebooks.", "numerical.missing", "numerical.scalar",
                 "numerical.auto.meta")


def tensor_bytes(modules: list[nn.Module]) -> dict[str, int]:
    """{"total", "tables"}: bytes of every tensor the modules hold, and of their per-id
    storage (TABLE_MARKERS; not dense layers, gates, batch norms or router centroids).
    Non-persistent buffers (e.g. a model's kept-pair index) count: the bundle stores them."""
    total = tables = 0
    for m in modules:
        for name, t in (*m.named_parameters(), *m.named_buffers()):
            n = t.numel() * t.element_size()
            total += n
            tables += n if any(k in name for k in TABLE_MARKERS) else 0
    return {"total": total, "tables": tables}


@torch.no_grad()
def seconds_per_10k(stages: list[tuple[nn.Module, object]], rows: int, batch: int = 1024, repeats: int = 3) -> float:
    """Median seconds (one thread) to run each (module, dataset view) over its test rows, per 10k rows.

    A routed row set is timed as router over all rows + each cluster model over its own
    rows, i.e. what a split-by-cluster predictor computes, without the split/merge bookkeeping.
    """
    loaded = [(m, list(iterate_batches(v, "test", batch, shuffle=False, seed=0, epoch=0))) for m, v in stages]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for module, batches in loaded:
            for b in batches:
                module(b.dense_features, b.sparse_features)
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return float(np.median(times)) / rows * 10_000


def served_programs(trained: Trained, router: nn.Module | None) -> tuple[list[nn.Module], nn.Module | None]:
    """What the bundle serves for retrained models: ([one program], None) when one program
    routes and scores (a model over one shared table set, or a router that fuses its
    cluster models into one), else (the cluster models' served forms, the router or None)."""
    served = [served_form(m) for m in trained.models]
    if trained.decisions.shared_tables:
        return [served[0].routed_program()], None
    fuse = getattr(router, "fuse", None) if len(served) > 1 else None
    fused = fuse(served) if fuse is not None else None
    if fused is not None:
        return [fused], None
    return served, (router if len(served) > 1 else None)


def trained_row(name: str, label: str, kind: str, trained: Trained, router, assign: dict, ds, search_seconds: float = 0.0) -> dict:
    """A report row for retrained models (served form timed and counted, router included when routed)."""
    served, routed = served_programs(trained, router)
    stages = [(routed, ds)] + [(m, RowSubset(ds, {"test": assign["test"] == c})) for c, m in enumerate(served)] \
        if routed is not None else [(served[0], ds)]
    size = tensor_bytes(([routed] if routed is not None else []) + served)
    return {
        "method": name, "label": label, "kind": kind, **trained.metrics,
        # of the models that score (Base's where the export guard routed a cluster to Base)
        "embedding_params": sum(m.embeddings.layout.embedding_params + m.first_order_params + m.value_embedding_params
                                for m in trained.models),
        # value embeddings (AutoDis meta-embeddings, ...) are float32 parameters
        "embedding_bytes": sum(m.embeddings.layout.embedding_bytes + 4 * m.value_embedding_params for m in trained.models),
        "served_bytes": size["total"], "served_table_bytes": size["tables"],
        # the router's own tensors (inside the one program when it fuses with the cluster models)
        "router_bytes": tensor_bytes([router])["total"] if router is not None and len(trained.models) > 1 else 0,
        "infer_s_per_10k": seconds_per_10k(stages, len(ds.indices("test"))),
        "clusters": len(trained.decisions.clusters), "dims": [c.dims for c in trained.decisions.clusters],
        "seconds": {"search": search_seconds, "retrain": trained.seconds},
        "per_cluster": trained.clusters,
    }


def supernet_row(name: str, label: str, supernet: nn.Module, metrics: dict, params: int, ds, search_seconds: float) -> dict:
    """A report row for the search-stage network itself (deterministic architecture, nothing retrained)."""
    size = tensor_bytes([supernet])
    return {
        "method": name, "label": label, "kind": "supernet", **metrics, "embedding_params": params,
        "embedding_bytes": None, "served_bytes": size["total"], "served_table_bytes": size["tables"], "router_bytes": 0,
        "infer_s_per_10k": seconds_per_10k([(supernet, ds)], len(ds.indices("test"))),
        "clusters": 1, "seconds": {"search": search_seconds, "retrain": 0.0},
    }


def cluster_purity(ds, assign: np.ndarray) -> float | None:
    """Share of test rows whose cluster's majority planted group is their own (synthetic data only)."""
    if ds.groups is None:
        return None
    groups = np.asarray(ds.groups[ds.indices("test")])
    hits = sum(np.bincount(groups[assign == c]).max() for c in np.unique(assign))
    return float(hits / len(groups))


def format_rows(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    lines = [f"{'method':26} {'test AUC':>9} {'logloss':>8} {'emb params':>11} {'served bytes':>13} {'s/10k rows':>10}"]
    for r in rows:
        lines.append(f"{r['label'][:26]:26} {r['test_auc']:9.4f} {r['test_logloss']:8.4f} {r['embedding_params']:11,} "
                     f"{r['served_bytes']:13,} {r['infer_s_per_10k']:10.4f}")
    for r in rows:
        lost = [c["cluster"] for c in r.get("guard", []) if c["served_by"] == "base"]
        if lost:
            lines.append(f"{r['label']}: clusters {lost} of {len(r['guard'])} score below Base on their own validation "
                         "rows and are served by Base")
    return "\n".join(lines)
