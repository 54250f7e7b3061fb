"""How iHAS turns rows into clusters besides the K-means itself: per-field scaling of the
clustered features, seeded K-means restarts, and the diagnostic of whether the gates differ
between rows at all (per cluster and per planted group)."""

from __future__ import annotations

import numpy as np
import torch

from trainer.search.ihas.kmeans import MiniBatchKMeans, sq_dists


def field_scale(x: np.ndarray, fields: int) -> np.ndarray:
    """Per-column factors giving each of `fields` equal blocks of columns unit total variance
    (fields = the number of columns: every column unit variance)."""
    var = x.var(axis=0).reshape(fields, -1).sum(axis=1)
    per_field = np.where(var > 0, 1.0 / np.sqrt(np.maximum(var, 1e-12)), 1.0)
    return np.repeat(per_field, x.shape[1] // fields).astype(np.float32)


def best_kmeans(x: np.ndarray, k: int, restarts: int, max_iter: int, tol: float, seed: int,
                batch_size: int) -> tuple[MiniBatchKMeans, float]:
    """The lowest-inertia of `restarts` mini-batch K-means runs seeded seed, seed + 1, ..."""
    best, best_inertia = None, float("inf")
    for r in range(restarts):
        km = MiniBatchKMeans(k, max_iter, tol, seed + r)
        km.fit(x, batch_size=batch_size)
        inertia = float(sq_dists(torch.as_tensor(x), km.centroids).min(dim=1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = km, inertia
    return best, best_inertia


def gate_diagnostics(masks: np.ndarray, names: list[str], assign: np.ndarray, groups: np.ndarray | None) -> dict:
    """Do the gates differ between rows? Per-field open fraction per cluster (and per planted
    group when known), and the share of rows whose mask differs from the majority mask."""
    per_field = masks.reshape(len(masks), len(names), -1).mean(axis=2)  # [rows, N] open fraction of each field

    def by(labels: np.ndarray) -> dict:
        return {int(g): dict(zip(names, per_field[labels == g].mean(axis=0).round(3).tolist())) for g in np.unique(labels)}

    majority = masks.mean(axis=0) >= 0.5
    out = {"open_by_cluster": by(assign), "rows_differing_from_majority_mask": float((masks != majority).any(axis=1).mean()),
           "mean_share_of_gates_differing": float((masks != majority).mean())}
    if groups is not None:
        out["open_by_group"] = by(groups)
    return out
