"""Per-field vocabularies: count tokens on the train split (pass 1), then fix each field's
ids and encode columns with them (pass 2).

Vocabulary order is descending train count, then token, so ids are deterministic; tokens
counted fewer than `min_count` times share the OOV id 0. `id_counts` is the train count
of every id (id 0: all OOV occurrences), which frequency-aware methods (AutoDPQ) need.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain, compress, repeat
from typing import Sequence

import numpy as np

from serving.features import MISSING, OOV_ID, Field
from trainer.data.fitting import TrainValues
from trainer.data.numerical import MISSING_BUCKET, bucketize, codes
from trainer.data.readers.base import FieldDecl


def id_dtype(num_embeddings: int) -> type:
    return np.int32 if num_embeddings < 2**31 else np.int64


def _ranked(counts: dict[str, int], min_count: int) -> list[tuple[str, int]]:
    return sorted(((t, c) for t, c in counts.items() if c >= min_count), key=lambda tc: (-tc[1], tc[0]))


class TokenVocab:
    """String tokens of a categorical or bag field.

    Args:
        decl: the field.
    """

    def __init__(self, decl: FieldDecl):
        self.decl = decl
        self.counts: Counter = Counter()
        self.total = 0  # train tokens seen
        self.values = 0  # bag tokens over all rows (sizes the values array)
        self.index: dict[str, int] = {}

    def count(self, column: Sequence, train: np.ndarray) -> None:
        rows = compress(column, train)
        if self.decl.kind == "bag":
            self.values += sum(map(len, column))
            rows = list(chain.from_iterable(rows))
        else:
            rows = list(rows)
        self.counts.update(rows)
        self.total += len(rows)

    def build(self, min_count: int) -> Field:
        kept = _ranked(self.counts, min_count)
        self.index = {t: i + 1 for i, (t, _) in enumerate(kept)}
        self.id_counts = np.array([self.total - sum(c for _, c in kept)] + [c for _, c in kept], dtype=np.int64)
        self.counts = Counter()  # pass 2 needs only the index
        return Field(self.decl.name, self.decl.kind, tuple(t for t, _ in kept), tuple(c for _, c in kept))

    def encode(self, column: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(self.index.get, column, repeat(OOV_ID)), dtype=np.int64, count=len(column))

    def encode_bag(self, column: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(lengths, flat ids) of a bag column."""
        lengths = np.fromiter(map(len, column), dtype=np.int64, count=len(column))
        return lengths, self.encode(list(chain.from_iterable(column)))


class CodeVocab:
    """A pre-coded categorical field (integer ids in [0, num_ids)).

    With min_count <= 1 the ids pass through untouched (Field.num_ids; the fast path, no
    strings at all); otherwise rare ids fold into OOV and the rest are renumbered by
    count, with the raw id as token, exactly like a string field.

    Args:
        decl: the field (decl.num_ids > 0).
    """

    def __init__(self, decl: FieldDecl):
        self.decl = decl
        self.counts = np.zeros(decl.num_ids, dtype=np.int64)
        self.lut: np.ndarray | None = None

    def count(self, column: np.ndarray, train: np.ndarray) -> None:
        if column.size and (column.min() < 0 or column.max() >= self.decl.num_ids):
            raise ValueError(f"field {self.decl.name!r}: pre-coded ids outside [0, {self.decl.num_ids})")
        np.add.at(self.counts, column[train], 1)

    def build(self, min_count: int) -> Field:
        if min_count <= 1:
            self.id_counts = self.counts
            return Field(self.decl.name, "categorical", (), num_ids=self.decl.num_ids)
        ids = np.flatnonzero(self.counts >= min_count)
        # descending count, then token: the token is str(id), so compare as strings
        kept = sorted(zip(self.counts[ids].tolist(), map(str, ids.tolist())), key=lambda ct: (-ct[0], ct[1]))
        self.lut = np.zeros(self.decl.num_ids, dtype=np.int64)
        self.lut[[int(t) for _, t in kept]] = np.arange(1, len(kept) + 1)
        counts = [c for c, _ in kept]
        self.id_counts = np.array([int(self.counts.sum()) - sum(counts)] + counts, dtype=np.int64)
        return Field(self.decl.name, "categorical", tuple(t for _, t in kept), tuple(counts))

    def encode(self, column: np.ndarray) -> np.ndarray:
        return column if self.lut is None else self.lut[column]


class NumberVocab:
    """A numerical field: the codes of its encoding become the tokens ("" = missing).

    "log" codes are Criteo buckets, counted as the rows stream by. "quantile" and "raw"
    must see every train value before a code exists, so pass 1 only collects what their
    fit needs (`TrainValues`) and `build` fits the encoding, then counts its codes.
    "autodis" does both: its codes are Criteo buckets, its dense input is fitted.

    Codes are small integers in practice (floor(ln(x)^2) <= 503,000 for any float;
    integer-valued columns below 2 rarely span far; bins are few), so counting and
    encoding use offset lookups rather than sorting; a column with a huge code range
    falls back to np.unique.

    Args:
        decl: the field (decl.encoding: the unfitted encoding).
    """

    LUT_SPAN = 1 << 22

    def __init__(self, decl: FieldDecl):
        self.decl = decl
        self.encoding = decl.encoding
        self.train_values = None if decl.encoding.name == "log" else TrainValues(decl.encoding)
        self.counts: Counter = Counter()
        self.index: dict[int, int] = {}

    def count(self, x: np.ndarray, train: np.ndarray) -> None:
        if self.train_values is not None:
            self.train_values.add(x[train])
            if self.encoding.name != "autodis":
                return
        b = bucketize(x[train])
        n_missing = int(np.count_nonzero(b == MISSING_BUCKET))
        if n_missing:
            self.counts[MISSING_BUCKET] += n_missing
            b = b[b != MISSING_BUCKET]
        if not b.size:
            return
        lo, hi = int(b.min()), int(b.max())
        if hi - lo < self.LUT_SPAN:
            n = np.bincount(b - lo)
            seen = np.flatnonzero(n)
            self.counts.update(dict(zip((seen + lo).tolist(), n[seen].tolist())))
        else:
            uniq, n = np.unique(b, return_counts=True)
            self.counts.update(dict(zip(uniq.tolist(), n.tolist())))

    def build(self, min_count: int) -> Field:
        if self.train_values is not None:
            self.encoding = self.train_values.fit()
            if self.encoding.name != "autodis":  # its bucket codes were counted in pass 1
                self.counts = Counter(self.train_values.code_counts(self.encoding))
            self.train_values = None  # pass 2 needs only the fitted encoding and the index
        tokens = {(MISSING if b == MISSING_BUCKET else str(b)): c for b, c in self.counts.items()}
        kept = _ranked(tokens, min_count)
        self.index = {(MISSING_BUCKET if t == MISSING else int(t)): i + 1 for i, (t, _) in enumerate(kept)}
        total = sum(self.counts.values())
        self.id_counts = np.array([total - sum(c for _, c in kept)] + [c for _, c in kept], dtype=np.int64)
        self.missing_id = self.index.get(MISSING_BUCKET, OOV_ID)
        numbers = [b for b in self.index if b != MISSING_BUCKET]
        self.lo = min(numbers, default=0)
        span = max(numbers, default=0) - self.lo + 1
        self.lut = None
        if span <= self.LUT_SPAN:
            self.lut = np.zeros(span, dtype=np.int64)
            for b in numbers:
                self.lut[b - self.lo] = self.index[b]
        return Field(self.decl.name, "numerical", tuple(t for t, _ in kept), tuple(c for _, c in kept), encoding=self.encoding)

    def encode(self, x: np.ndarray) -> np.ndarray:
        b = codes(x, self.encoding)
        if self.lut is None:
            uniq, inv = np.unique(b, return_inverse=True)
            return np.array([self.index.get(v, OOV_ID) for v in uniq.tolist()], dtype=np.int64)[inv]
        ids = np.full(len(b), OOV_ID, dtype=np.int64)
        known = (b >= self.lo) & (b < self.lo + len(self.lut))
        ids[known] = self.lut[b[known] - self.lo]
        ids[b == MISSING_BUCKET] = self.missing_id
        return ids


def vocab_for(decl: FieldDecl) -> TokenVocab | CodeVocab | NumberVocab:
    if decl.num_ids:
        return CodeVocab(decl)
    return NumberVocab(decl) if decl.kind == "numerical" else TokenVocab(decl)
