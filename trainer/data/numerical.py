"""Vectorised twins of serving.encodings' token rules, for whole columns.

The cache must produce exactly the tokens serving will compute one value at a time, so
the float64 numpy path is checked against `math` wherever ln(x)^2 lands within rounding
distance of an integer (numpy's SIMD log may differ from libm there by an ulp). A token is
the decimal string of an int64 code (`bucket_tokens`); MISSING_BUCKET stands for "".
The dense input has a single implementation, serving.batch.dense_column, used by both.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from serving.encodings import Encoding
from serving.features import MISSING

MISSING_BUCKET = np.iinfo(np.int64).min  # readers refuse numbers below -2**53, so no clash
_NEAR = 1e-9


def as_float(column: Sequence[str] | np.ndarray) -> np.ndarray:
    """A numerical column as float64 with NaN for missing (strings: "" = missing)."""
    if isinstance(column, np.ndarray) and column.dtype.kind == "f":
        return column.astype(np.float64, copy=False)
    arr = np.asarray(column, dtype=str)
    return np.where(arr == MISSING, "nan", arr).astype(np.float64)


def bucketize(x: np.ndarray) -> np.ndarray:
    """Criteo buckets as int64: floor(ln(x)^2) for x > 2, else floor(x); NaN → MISSING_BUCKET."""
    missing = np.isnan(x)
    out = np.floor(x)
    big = np.flatnonzero(x > 2)
    if len(big):
        t = np.log(x[big])
        t *= t
        fl = np.floor(t)
        out[big] = fl
        near = (t - fl < _NEAR * t) | (fl + 1 - t < _NEAR * t)
        for i in big[near]:
            out[i] = math.floor(math.log(float(x[i])) ** 2)
    out[missing] = 0
    b = out.astype(np.int64)
    b[missing] = MISSING_BUCKET
    return b


def bucket_tokens(buckets: np.ndarray) -> list[str]:
    """The FeatureSpec tokens of bucket values (what bucket_token returns)."""
    return [MISSING if b == MISSING_BUCKET else str(int(b)) for b in buckets]


def bin_codes(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Bin of each value among `edges` as int64 (bisect_right, like Encoding.token);
    NaN → MISSING_BUCKET. With no edges every present value is bin 0 (a "raw" field)."""
    b = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right").astype(np.int64)
    b[np.isnan(x)] = MISSING_BUCKET
    return b


def codes(x: np.ndarray, encoding: Encoding) -> np.ndarray:
    """The int64 codes of a float64 column under a fitted encoding (str(code) = token)."""
    # an autodis field's token is its Criteo bucket (see serving.encodings)
    return bucketize(x) if encoding.name in ("log", "autodis") else bin_codes(x, encoding.edges)
