"""What a frontier point's AUC means beyond its mean: the rows compression can touch, and
how sure a difference against the uncompressed model is.

* Low-frequency rows: test rows holding at least one low-frequency id (train count <
  the frontier's threshold, the ids Others, lowdim and AutoDPQ store differently); a
  scheme can only change these rows' scores through their coded ids, so their AUC shows
  what compression costs where it acts.
* Paired bootstrap: each resample draws test rows with replacement and scores both models
  on the same rows, so the interval of AUC(point) − AUC(reference) is free of the row
  sampling noise the two models share (what separate per-model intervals would double).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 200  # resamples: the 2.5% / 97.5% quantiles then rest on 5 draws each


def rank_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic with midranks for ties (equals the trapezoidal ROC AUC)."""
    order = np.argsort(probs, kind="mergesort")
    sorted_p = probs[order]
    ranks = np.empty(len(probs), dtype=np.float64)
    # midranks: every run of equal scores gets the mean of its positions
    start = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    end = np.r_[start[1:], len(probs)]
    ranks[order] = np.repeat((start + end + 1) / 2.0, end - start)
    pos = labels > 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        raise ValueError("AUC is undefined when the labels hold one class only")
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


class _Ranked:
    """One model's scores sorted once, so that the AUC of any resample is O(n): a resample is
    a count per row (how often it was drawn), and the Mann-Whitney statistic with midranks is
    then Σ over tie groups of positives × (negatives below + half the negatives tied)."""

    def __init__(self, probs: np.ndarray):
        self.order = np.argsort(probs, kind="mergesort")
        sorted_p = probs[self.order]
        self.group = np.cumsum(np.r_[0, sorted_p[1:] != sorted_p[:-1]])
        self.groups = int(self.group[-1]) + 1 if len(probs) else 0

    def auc(self, counts: np.ndarray, labels: np.ndarray) -> float:
        c, y = counts[self.order], labels[self.order] > 0.5
        pos = np.bincount(self.group, weights=c * y, minlength=self.groups)
        neg = np.bincount(self.group, weights=c * ~y, minlength=self.groups)
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def paired_bootstrap(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray, *, resamples: int = BOOTSTRAP,
                     seed: int = 0) -> dict:
    """AUC(probs) − AUC(reference) on the full rows, and the 2.5% / 97.5% quantiles of the same
    difference over `resamples` row resamples shared by both models."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    models = _Ranked(probs), _Ranked(reference)
    diffs = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        drawn = labels[counts > 0] > 0.5
        if drawn.all() or not drawn.any():
            continue
        diffs.append(models[0].auc(counts, labels) - models[1].auc(counts, labels))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"diff": rank_auc(probs, labels) - rank_auc(reference, labels), "lo": float(lo), "hi": float(hi),
            "resamples": len(diffs)}


def low_frequency_rows(ds, split: str, threshold: int) -> np.ndarray:
    """Bool per row of `split`: holds, in any field, an id other than 0 (OOV) whose train count
    is below `threshold` (a low-frequency id, by the train counts themselves, so the ids need
    not be in count order)."""
    rows = ds.indices(split)
    low = np.zeros(len(rows), dtype=bool)

    def is_low(name: str, ids: np.ndarray) -> np.ndarray:
        counts = np.asarray(ds.id_counts[name])
        return (np.asarray(counts[ids]) < threshold) & (ids != 0)

    for name, ids in ds.ids.items():
        low |= is_low(name, np.asarray(ids[rows]))
    for name, (offsets, values) in ds.bags.items():
        offsets = np.asarray(offsets)
        hit = is_low(name, np.asarray(values)).astype(np.int64)
        # per-row sums of `hit` by cumulative sums (empty bags add 0)
        cum = np.r_[0, np.cumsum(hit)]
        low |= (cum[offsets[rows + 1]] - cum[offsets[rows]]) > 0
    return low
