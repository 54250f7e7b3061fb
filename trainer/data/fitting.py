"""Fitting a numerical field's encoding on the train split (cache pass 1).

Quantile edges are exact: the distinct train values are kept with their counts (memory
grows with the number of distinct values, not rows: integer counts and prices repeat a
lot; a continuous column of N train rows costs about 16 bytes a row). "raw" and "autodis"
keep only count, mean and the sum of squared deviations (of x, resp. signed_log(x)),
merged chunk by chunk.
"""

from __future__ import annotations

import math

import numpy as np

from serving.batch import signed_log
from serving.encodings import STANDARDISED, Encoding
from trainer.data.numerical import MISSING_BUCKET, bin_codes


def quantile_edges(values: np.ndarray, counts: np.ndarray, bins: int) -> tuple[float, ...]:
    """Edges of up to `bins` equal-count bins over sorted distinct `values` with `counts`.

    Edge k is the value at 0-based rank floor(k * n / bins), so bin k starts at the first
    value of the k-th n/bins slice; tied values cannot straddle an edge, hence repeated
    edges are merged, and an edge at the minimum (an empty bin 0) is dropped.
    """
    n = int(counts.sum())
    if n == 0:
        return ()
    ranks = np.arange(1, bins, dtype=np.int64) * n // bins
    picked = values[np.searchsorted(np.cumsum(counts), ranks, side="right")]
    edges = np.unique(picked)
    return tuple(float(e) for e in edges[edges > values[0]])


class TrainValues:
    """The train values of one numerical field, kept as far as its encoding's fit needs.

    Args:
        encoding: the unfitted encoding ("quantile", "raw" or "autodis").
    """

    MERGE_AT = 1 << 20  # distinct values pending before they are merged into the sorted set

    def __init__(self, encoding: Encoding):
        if encoding.name not in ("quantile", *STANDARDISED):
            raise ValueError(f"nothing to fit for encoding {encoding.name!r}")
        self.encoding = encoding
        self.missing = 0
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.values, self.counts = np.empty(0, np.float64), np.empty(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, x: np.ndarray) -> None:
        """Train rows' values (float64, NaN = missing)."""
        present = x[~np.isnan(x)]
        self.missing += len(x) - len(present)
        if not len(present):
            return
        if self.encoding.name == "raw":
            self._add_moments(present)
            return
        if self.encoding.name == "autodis":
            self._add_moments(signed_log(present))
            return
        self._pending.append(np.unique(present, return_counts=True))
        self._pending_size += len(self._pending[-1][0])
        if self._pending_size > max(self.MERGE_AT, len(self.values)):  # doubling: merges cost O(n log n) overall
            self._merge()

    def _add_moments(self, x: np.ndarray) -> None:
        # merging per-chunk moments keeps the variance accurate where sum-of-squares would not
        m, mean = len(x), float(x.mean())
        m2 = float(np.square(x - mean).sum())
        total = self.n + m
        delta = mean - self.mean
        self.mean += delta * m / total
        self.m2 += m2 + delta * delta * self.n * m / total
        self.n = total

    def _merge(self) -> None:
        if not self._pending:
            return
        values = np.concatenate([self.values] + [v for v, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self.values, inverse = np.unique(values, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(self.values)).astype(np.int64)
        self._pending, self._pending_size = [], 0

    def fit(self) -> Encoding:
        """The fitted encoding: quantile edges, or the mean and std of the present values
        (std 1 when they do not vary, so standardising never divides by zero)."""
        if self.encoding.name in STANDARDISED:
            std = math.sqrt(self.m2 / self.n) if self.n else 0.0
            return Encoding(self.encoding.name, mean=self.mean, std=std if std > 0 else 1.0)
        self._merge()
        return Encoding("quantile", self.encoding.bins, quantile_edges(self.values, self.counts, self.encoding.bins))

    def code_counts(self, fitted: Encoding) -> dict[int, int]:
        """Train count of each code of the fitted encoding (MISSING_BUCKET = missing)."""
        if fitted.name == "raw":
            out = {0: self.n}
        else:
            self._merge()
            n = np.bincount(bin_codes(self.values, fitted.edges), weights=self.counts, minlength=len(fitted.edges) + 1)
            out = {int(b): int(c) for b, c in enumerate(n) if c}
        if self.missing:
            out[MISSING_BUCKET] = self.missing
        return {b: c for b, c in out.items() if c}
