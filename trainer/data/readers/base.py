"""The one interface every data source implements, and the error it raises.

A reader turns a source (a file, a directory, a generator's parameters) into a stream of
`RawChunk`s of raw values; it knows nothing about vocabularies, splits or caches. The
cache builder (trainer.data.cache) streams a reader twice — once to count tokens on the
train split, once to encode — so `iter_chunks` must yield the same rows in the same order
every time it is called, and must never hold more than one chunk's rows in memory.

Column conventions inside a `RawChunk` (n = number of rows):
  categorical  a sequence of n raw strings ("" = missing), or, for a *pre-coded* field
               (`FieldDecl.num_ids > 0`), an integer ndarray of ids in [0, num_ids).
               Pre-coded is the fast path for generated data: no string tokens at all.
  numerical    a sequence of n raw strings ("" = missing) or a float ndarray with NaN for
               missing; readers of text files parse and validate numbers themselves (they
               know the line numbers) and hand over the float array.
  bag          a sequence of n lists of raw string tokens (an empty list = empty bag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from serving.encodings import LOG, Encoding

KINDS = ("categorical", "numerical", "bag")
# Field names become cache file names and TorchRec feature names.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class DataError(ValueError):
    """Malformed or missing input data. Names the file, the 1-based line and the problem.

    Args:
        path: the file (or directory) at fault.
        line: 1-based line number, or None when the problem is not on one line.
        problem: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class FieldDecl:
    """A field as the source declares it (before any vocabulary exists).

    Args:
        name: field name (also the TorchRec feature name and part of cache file names).
        kind: "categorical", "numerical" or "bag".
        num_ids: > 0 marks a pre-coded categorical field whose column holds integer ids
            in [0, num_ids) instead of strings (see the module docstring).
        encoding: numerical fields: the (unfitted) encoding the config chose; the cache
            builder fits it on the train split.
    """

    name: str
    kind: str
    num_ids: int = 0
    encoding: Encoding = LOG

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"field name {self.name!r}: use letters, digits, '_', '.', '-' (it names cache files)")
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r} not one of {KINDS}")
        if self.num_ids and self.kind != "categorical":
            raise ValueError(f"field {self.name!r}: only categorical fields can be pre-coded")
        if self.encoding != LOG and self.kind != "numerical":
            raise ValueError(f"field {self.name!r}: only numerical fields have an encoding")


@dataclass
class RawChunk:
    """Up to `chunk_rows` consecutive rows of a source.

    Args:
        labels: float32 [n], each 0.0 or 1.0.
        columns: field name → column (see the module docstring for the per-kind types).
        groups: int [n] planted sub-population of each row (synthetic data only).
    """

    labels: np.ndarray
    columns: dict[str, Any]
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@runtime_checkable
class Reader(Protocol):
    """A data source.

    Attributes:
        dataset_id: stable name of the dataset (goes into the FeatureSpec and cache path).
        label: name of the label column in the source.
        bad_lines: malformed lines skipped by the latest `iter_chunks` pass (0 unless the
            reader was built with max_bad_lines > 0; more than that raises DataError).
            Readers may also offer `bad_examples: list[str]`, the first few skipped
            problems, which the cache logs and stores in its meta.
    """

    dataset_id: str
    label: str
    bad_lines: int

    def fields(self) -> list[FieldDecl]:
        """The fields every chunk carries, in model order."""
        ...

    def fingerprint(self) -> str:
        """Changes whenever the rows could change: source path + size + mtime, or parameters."""
        ...

    def iter_chunks(self, chunk_rows: int) -> Iterator[RawChunk]:
        """The rows, in a fixed order, in chunks of at most chunk_rows rows."""
        ...


class BadLines:
    """Counts malformed lines of one pass and enforces the reader's `max_bad_lines`.

    With limit 0 the first bad line raises; with limit N the first N are skipped (the
    first few problems are kept in `examples` for the cache log) and the N+1st raises.

    Args:
        limit: how many bad lines may be skipped.
    """

    KEEP = 5

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.examples: list[str] = []

    def report(self, path: str, line: int | None, problem: str) -> None:
        if self.limit <= 0:
            raise DataError(path, line, problem)
        self.count += 1
        if self.count > self.limit:
            raise DataError(path, line, f"{problem} (more than max_bad_lines={self.limit} bad lines)")
        if len(self.examples) < self.KEEP:
            self.examples.append(str(DataError(path, line, problem)))


class FileReader:
    """What the file readers share: the source path, the bad-line budget, and the bad-line
    count and examples of the latest pass (a `BadLines` per pass, read back when the pass
    ends, however it ends).

    Subclasses set `dataset_id` and `label`, and implement `fields`, `fingerprint` and
    `_chunks(chunk_rows, bad)`, which reports malformed lines to `bad`.

    Args:
        path: the file or directory.
        max_bad_lines: malformed lines that may be skipped (counted) before DataError.
    """

    def __init__(self, path: str, max_bad_lines: int = 0):
        self.path, self.max_bad_lines = str(path), max_bad_lines
        self.bad_lines, self.bad_examples = 0, []

    def iter_chunks(self, chunk_rows: int) -> Iterator[RawChunk]:
        bad = BadLines(self.max_bad_lines)
        try:
            yield from self._chunks(chunk_rows, bad)
        finally:
            self.bad_lines, self.bad_examples = bad.count, bad.examples

    def _chunks(self, chunk_rows: int, bad: BadLines) -> Iterator[RawChunk]:
        raise NotImplementedError


def head_rows(chunk: RawChunk, n: int) -> RawChunk:
    """The first n rows of `chunk` (columns are sequences or arrays; both slice)."""
    groups = None if chunk.groups is None else chunk.groups[:n]
    return RawChunk(chunk.labels[:n], {k: v[:n] for k, v in chunk.columns.items()}, groups)


class Wrapped:
    """A reader that passes everything through to another one; subclasses change a part
    (and must then change the fingerprint too, or caches of the two would be confused).

    Args:
        reader: the wrapped reader.
    """

    def __init__(self, reader: Reader):
        self.inner = reader
        self.dataset_id, self.label = reader.dataset_id, reader.label

    @property
    def bad_lines(self) -> int:
        return self.inner.bad_lines

    @property
    def bad_examples(self) -> list[str]:
        return getattr(self.inner, "bad_examples", [])

    def fields(self) -> list[FieldDecl]:
        return self.inner.fields()

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def iter_chunks(self, chunk_rows: int) -> Iterator[RawChunk]:
        return self.inner.iter_chunks(chunk_rows)


class Head(Wrapped):
    """The first `max_rows` rows of another reader (the `max_rows` cap of the config).

    Args:
        reader: the wrapped reader.
        max_rows: how many rows to keep (> 0).
    """

    def __init__(self, reader: Reader, max_rows: int):
        if max_rows <= 0:
            raise ValueError(f"max_rows must be > 0, got {max_rows}")
        super().__init__(reader)
        self.max_rows = max_rows

    def fingerprint(self) -> str:
        return f"{self.inner.fingerprint()}|head={self.max_rows}"

    def iter_chunks(self, chunk_rows: int) -> Iterator[RawChunk]:
        left = self.max_rows
        for chunk in self.inner.iter_chunks(chunk_rows):
            if len(chunk) >= left:
                yield head_rows(chunk, left)
                return
            left -= len(chunk)
            yield chunk
