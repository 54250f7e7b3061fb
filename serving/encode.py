"""Request rows / columns → a validated FeatureBatch, or InvalidRequest naming row and field.

Everything a caller can get wrong is caught here, before a tensor is built: FBGEMM and
`nn.EmbeddingBag` do not check ids (an out-of-range id reads another row or past the
table), so ids are range-checked against the spec, NaN/Inf never reach bucketization,
and bag sizes are bounded. Raw values are mapped with `serving.features` — the code the
training cache was built with — so a raw token gets the id training gave it.

Two input forms, one result:
  rows     one mapping per row, field name → a `Tagged` value (or a plain Python value,
           see `tag_python`); readable, costs Python work per value.
  columns  per field a packed array (ids, tokens or numbers) plus bag lengths;
           vectorised range checks, for high-throughput callers.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from serving.batch import LENGTHS_DTYPE, VALUES_DTYPE, FeatureBatch, numerical_dense
from serving.errors import InvalidRequest
from serving.features import MISSING, FeatureSpec, FeatureSpecError, Field


class Tag(enum.Enum):
    """What a request value is; the wire format says it explicitly (a proto oneof)."""

    TOKEN = "token"  # raw categorical/numerical value as in the data files
    ID = "id"  # pre-encoded categorical id
    NUMBER = "number"  # raw numerical value
    TOKENS = "tokens"  # bag of raw tokens
    IDS = "ids"  # bag of pre-encoded ids


Tagged = tuple[Tag, Any]

# What each field kind accepts, for the messages too.
_ACCEPTS = {
    "categorical": (Tag.TOKEN, Tag.ID),
    "numerical": (Tag.NUMBER, Tag.TOKEN),
    "bag": (Tag.TOKENS, Tag.IDS),
}


def tag_python(value: Any, kind: str) -> Tagged:
    """Tags a plain Python value: str → token, int → id (a number for numerical fields),
    float → number, list of str → tokens, list of int → ids. Anything else is refused
    by the encoder as a wrong type."""
    if isinstance(value, str):
        return Tag.TOKEN, value
    if isinstance(value, bool):  # bool is an int subclass; a True id is a bug upstream
        return Tag.NUMBER if kind == "numerical" else Tag.ID, value
    if isinstance(value, (int, np.integer)):
        return (Tag.NUMBER, float(value)) if kind == "numerical" else (Tag.ID, int(value))
    if isinstance(value, (float, np.floating)):
        return Tag.NUMBER, float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        return (Tag.TOKENS if all(isinstance(v, str) for v in items) else Tag.IDS), items
    return None, value  # type: ignore[return-value]


@dataclass(frozen=True)
class Column:
    """One field of a columnar batch. Set exactly one of ids / tokens / numbers.

    Args:
        ids: pre-encoded ids (categorical or bag; bags concatenated in row order).
        tokens: raw tokens (categorical, numerical or bag; "" = missing for numerical).
        numbers: raw numerical values.
        lengths: bag fields only: bag size per row.
    """

    ids: Any = None
    tokens: Sequence[str] | None = None
    numbers: Any = None
    lengths: Any = None


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Args:
        max_rows: rows per request; more is INVALID_ARGUMENT (split the batch).
        max_bag: values per bag per row.
    """

    max_rows: int = 4096
    max_bag: int = 1024


class Encoder:
    """Validates and encodes request values against one FeatureSpec.

    Args:
        spec: the bundle's feature spec.
        limits: request size limits.
    """

    def __init__(self, spec: FeatureSpec, limits: Limits = Limits()):
        self.spec = spec
        self.limits = limits
        self._fields = {f.name: f for f in spec.fields}
        self._numerical_pos = {name: i for i, name in enumerate(spec.numerical)}
        self._dense_encodings = [spec.field(name).encoding for name in spec.numerical]

    # ---------------------------------------------------------------- row form
    def encode_rows(self, rows: Sequence[Mapping[str, Any]], *, tagged: bool = False) -> FeatureBatch:
        """Rows → FeatureBatch.

        Args:
            rows: one mapping per row, field name → value.
            tagged: values are `(Tag, payload)` pairs (the wire decoder's output);
                otherwise plain Python values, tagged with `tag_python`.
        """
        n = len(rows)
        self.check_num_rows(n)
        fields = self.spec.fields
        ids: list[list] = [[] for _ in fields]
        lengths: list[list[int] | None] = [[] if f.kind == "bag" else None for f in fields]
        raw_numbers = np.zeros((n, len(self.spec.numerical)), dtype=np.float64)
        for r, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidRequest(f"a row must map field names to values, got {type(row).__name__}", row=r)
            if len(row) != len(fields) or any(name not in row for name in self._fields):
                self._missing_or_unknown(row.keys(), row=r)
            for j, f in enumerate(fields):
                value = row[f.name]
                tag, payload = value if tagged else tag_python(value, f.kind)
                if f.kind == "bag":
                    bag = self._bag(f, tag, payload, r)
                    ids[j].extend(bag)
                    lengths[j].append(len(bag))
                elif f.kind == "numerical":
                    x = self._number(f, tag, payload, r)
                    raw_numbers[r, self._numerical_pos[f.name]] = x
                    ids[j].append(self._bucket_id(f, x, r))
                else:
                    ids[j].append(self._categorical(f, tag, payload, r))
        return FeatureBatch(
            numerical_dense(raw_numbers, self._dense_encodings),
            tuple(np.asarray(v, dtype=VALUES_DTYPE) for v in ids),
            tuple(None if lens is None else np.asarray(lens, dtype=LENGTHS_DTYPE) for lens in lengths),
        )

    def _categorical(self, f: Field, tag: Tag, payload: Any, r: int) -> int:
        if tag is Tag.TOKEN:
            return f.encode(payload)
        if tag is Tag.ID:
            return self._id(f, payload, r)
        raise self._wrong_type(f, tag, r)

    def _number(self, f: Field, tag: Tag, payload: Any, r: int) -> float:
        """The raw numerical value as float64; NaN stands for missing ("" token)."""
        if tag is Tag.TOKEN:
            if payload == MISSING:
                return math.nan
            try:
                x = float(payload)
            except ValueError:
                raise InvalidRequest(f"token {payload!r} is not a number (\"\" = missing)", row=r, field=f.name) from None
        elif tag is Tag.NUMBER and not isinstance(payload, bool):
            x = float(payload)
        else:
            raise self._wrong_type(f, tag, r)
        if not math.isfinite(x):
            raise InvalidRequest(f"value {x} is not finite", row=r, field=f.name)
        return x

    def _bucket_id(self, f: Field, x: float, r: int) -> int:
        try:
            return f.encode(MISSING if math.isnan(x) else x)
        except (FeatureSpecError, ValueError, OverflowError) as e:
            raise InvalidRequest(str(e), row=r, field=f.name) from None

    def _id(self, f: Field, payload: Any, r: int) -> int:
        if isinstance(payload, bool) or not isinstance(payload, (int, np.integer)):
            raise InvalidRequest(f"id {payload!r} is not an integer", row=r, field=f.name)
        if not 0 <= payload < f.num_embeddings:
            raise InvalidRequest(f"id {payload} out of range [0, {f.num_embeddings})", row=r, field=f.name)
        return int(payload)

    def _bag(self, f: Field, tag: Tag, payload: Any, r: int) -> list[int]:
        if tag not in (Tag.TOKENS, Tag.IDS):
            raise self._wrong_type(f, tag, r)
        if len(payload) > self.limits.max_bag:
            raise InvalidRequest(f"bag of {len(payload)} values exceeds the limit {self.limits.max_bag}", row=r, field=f.name)
        if tag is Tag.TOKENS:
            if not all(isinstance(t, str) for t in payload):
                raise InvalidRequest("bag tokens must all be strings", row=r, field=f.name)
            return f.encode(payload)
        return [self._id(f, i, r) for i in payload]

    # ------------------------------------------------------------ column form
    def encode_columns(self, num_rows: int, columns: Mapping[str, Column]) -> FeatureBatch:
        """Columns → FeatureBatch.

        Args:
            num_rows: rows in the batch.
            columns: field name → Column, one per spec field.
        """
        self.check_num_rows(num_rows)
        if len(columns) != len(self._fields) or any(name not in columns for name in self._fields):
            self._missing_or_unknown(columns.keys(), row=None)
        raw_numbers = np.zeros((num_rows, len(self.spec.numerical)), dtype=np.float64)
        ids, lengths = [], []
        for f in self.spec.fields:
            col = columns[f.name]
            given = [k for k in ("ids", "tokens", "numbers") if getattr(col, k) is not None]
            if len(given) != 1:
                raise InvalidRequest(f"set exactly one of ids / tokens / numbers, got {given or 'none'}", field=f.name)
            if f.kind == "bag":
                values, lens = self._bag_column(f, col, num_rows)
            else:
                if col.lengths is not None and len(col.lengths):
                    raise InvalidRequest(f"lengths are for bag fields; {f.kind} fields have one value per row", field=f.name)
                size = len(getattr(col, given[0]))
                if size != num_rows:
                    raise InvalidRequest(f"{size} values for {num_rows} rows", field=f.name)
                lens = None
                if f.kind == "numerical":
                    x = self._number_column(f, col)
                    raw_numbers[:, self._numerical_pos[f.name]] = x
                    values = np.fromiter((self._bucket_id(f, v, r) for r, v in enumerate(x.tolist())), VALUES_DTYPE, num_rows)
                else:
                    values = self._id_column(f, col, None)
            ids.append(values)
            lengths.append(lens)
        return FeatureBatch(numerical_dense(raw_numbers, self._dense_encodings), tuple(ids), tuple(lengths))

    def _id_column(self, f: Field, col: Column, offsets: np.ndarray | None) -> np.ndarray:
        if col.tokens is not None:
            if not all(isinstance(t, str) for t in col.tokens):
                raise InvalidRequest("tokens must all be strings", field=f.name)
            return np.fromiter((f.token_id(t) for t in col.tokens), VALUES_DTYPE, len(col.tokens))
        if col.numbers is not None:
            raise InvalidRequest(f"wrong type: numbers given; a {f.kind} field takes ids or tokens", field=f.name)
        ids = np.asarray(col.ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise InvalidRequest(f"ids must be integers, got dtype {ids.dtype}", field=f.name)
        ids = ids.astype(VALUES_DTYPE, copy=False).reshape(-1)
        bad = (ids < 0) | (ids >= f.num_embeddings)
        if bad.any():
            i = int(np.argmax(bad))
            row = i if offsets is None else int(np.searchsorted(offsets, i, side="right") - 1)
            raise InvalidRequest(f"id {int(ids[i])} out of range [0, {f.num_embeddings})", row=row, field=f.name)
        return ids

    def _number_column(self, f: Field, col: Column) -> np.ndarray:
        if col.ids is not None:
            raise InvalidRequest("wrong type: ids given; a numerical field takes numbers or tokens", field=f.name)
        if col.tokens is not None:
            return np.array([self._number(f, Tag.TOKEN, t, r) for r, t in enumerate(col.tokens)], dtype=np.float64)
        x = np.asarray(col.numbers)
        if x.size and x.dtype.kind not in "iuf":
            raise InvalidRequest(f"numbers must be numeric, got dtype {x.dtype}", field=f.name)
        x = x.astype(np.float64, copy=False).reshape(-1)
        bad = ~np.isfinite(x)
        if bad.any():
            r = int(np.argmax(bad))
            raise InvalidRequest(f"value {x[r]} is not finite", row=r, field=f.name)
        return x

    def _bag_column(self, f: Field, col: Column, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
        if col.numbers is not None:
            raise InvalidRequest("wrong type: numbers given; a bag field takes ids or tokens", field=f.name)
        lens = np.asarray(col.lengths if col.lengths is not None else [])
        if lens.size and lens.dtype.kind not in "iu":
            raise InvalidRequest(f"lengths must be integers, got dtype {lens.dtype}", field=f.name)
        lens = lens.astype(np.int64, copy=False).reshape(-1)
        if len(lens) != num_rows:
            raise InvalidRequest(f"{len(lens)} bag lengths for {num_rows} rows (give one length per row)", field=f.name)
        for bad, what in ((lens < 0, "is negative"), (lens > self.limits.max_bag, f"exceeds the limit {self.limits.max_bag}")):
            if bad.any():
                r = int(np.argmax(bad))
                raise InvalidRequest(f"bag length {int(lens[r])} {what}", row=r, field=f.name)
        total = int(lens.sum())
        given = len(col.ids if col.ids is not None else col.tokens)
        if total != given:
            raise InvalidRequest(f"bag lengths sum to {total} but {given} values were given", field=f.name)
        offsets = np.cumsum(lens) - lens
        return self._id_column(f, col, offsets), lens.astype(LENGTHS_DTYPE)

    # ----------------------------------------------------------------- shared
    def check_num_rows(self, n: int) -> None:
        """Refuses an empty batch or one over `limits.max_rows` (cheap; call before decoding)."""
        if n <= 0:
            raise InvalidRequest("empty batch: send at least one row")
        if n > self.limits.max_rows:
            raise InvalidRequest(f"batch of {n} rows exceeds the limit of {self.limits.max_rows} rows per request; split it")

    def _missing_or_unknown(self, names, row: int | None) -> None:
        given = list(names)
        unknown = [n for n in given if n not in self._fields]
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}; fields are {self.spec.names}", row=row, field=unknown[0])
        dup = sorted({n for n in given if given.count(n) > 1})
        if dup:
            raise InvalidRequest(f"field given more than once: {dup[0]!r}", row=row, field=dup[0])
        missing = [n for n in self.spec.names if n not in given]
        raise InvalidRequest(f"missing field {missing[0]!r}; every row needs all of {self.spec.names}", row=row, field=missing[0])

    def _wrong_type(self, f: Field, tag: Tag | None, r: int) -> InvalidRequest:
        got = tag.value if tag is not None else "an unsupported value"
        want = " or ".join(t.value for t in _ACCEPTS[f.kind])
        return InvalidRequest(f"wrong type: a {f.kind} field takes {want}, got {got}", row=r, field=f.name)
