"""Machinery shared by the readers of delimited text files (Criteo, Avazu, tables, ML-1M).

A chunk of lines is turned into columns at once (no Python object per row unless CSV
quoting is on); labels and numbers are checked per column and only a failing chunk is
walked value by value to find the offending line, so validation costs little on clean
data.
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
import math
import os
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, Sequence

import numpy as np

from trainer.data.readers.base import BadLines, DataError, FieldDecl, RawChunk

# Below this a float no longer floors to an int64 bucket; serving's bucket_token would
# produce a token the vectorised cache path cannot, so such values are refused up front.
MIN_NUMBER = -(2.0**53)


def open_text(path: str, encoding: str = "utf-8") -> io.TextIOBase:
    """A text stream over `path` (gzip when it ends in .gz). Undecodable bytes become U+FFFD
    instead of aborting a multi-hour pass on one bad byte."""
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")


def file_fingerprint(*paths: str) -> str:
    """path + size + mtime of each file: changes when any file is replaced or edited."""
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise DataError(p, None, "file not found") from None
        parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def parse_labels(values: Sequence[str], positive: frozenset[str] | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Labels → float32 0/1, plus {row: problem}.

    Args:
        values: the label cells.
        positive: the values that are a click (compared after stripping spaces); every
            other non-empty value is a 0. None: the cells must be numbers equal to 0 or 1.
    """
    if positive is not None:
        return _named_labels(values, positive)
    n = len(values)
    ones = np.fromiter(map("1".__eq__, values), dtype=bool, count=n)
    bad: dict[int, str] = {}
    if values.count("0") + int(ones.sum()) != n:  # rare: only then look at each value
        for i, v in enumerate(values):
            if v in ("0", "1"):
                continue
            try:
                x = float(v)
            except ValueError:
                x = None
            if x == 1.0:
                ones[i] = True
            elif x != 0.0:
                bad[i] = f"label {v!r} is not 0 or 1"
    return ones.astype(np.float32), bad


def _named_labels(values: Sequence[str], positive: frozenset[str]) -> tuple[np.ndarray, dict[int, str]]:
    stripped = [v.strip() for v in values]
    ones = np.fromiter(map(positive.__contains__, stripped), dtype=bool, count=len(values))
    bad = {i: "the label is empty" for i, v in enumerate(stripped) if not v}
    return ones.astype(np.float32), bad


def parse_numbers(values: Sequence[str], name: str) -> tuple[np.ndarray, dict[int, str]]:
    """Numbers as strings ("" = missing) → float64 with NaN for missing, plus {row: problem}.

    Python's float() per value beats numpy's str→float cast here (the cells are already
    Python strings); a failing chunk is redone value by value to find the culprits.
    """
    n = len(values)
    nan = math.nan
    try:
        out = np.fromiter((float(v) if v else nan for v in values), dtype=np.float64, count=n)
    except ValueError:
        out = np.full(n, np.inf)  # unparseable stays inf and is flagged below
        for i, v in enumerate(values):
            try:
                out[i] = float(v) if v else nan
            except ValueError:
                pass
    present = np.fromiter(map(bool, values), dtype=bool, count=n)
    bad = {}
    for i in np.flatnonzero(present & ~(np.isfinite(out) & (out >= MIN_NUMBER))):
        bad[int(i)] = f"field {name!r}: {values[i]!r} is not a finite number >= {MIN_NUMBER:.0f}"
    return out, bad


def split_bag(values: Iterable[str], sep: str) -> list[list[str]]:
    return [v.split(sep) if v else [] for v in values]


@dataclass(frozen=True)
class Layout:
    """Where the label and each field sit in a delimited row.

    Args:
        n_cols: columns every row must have.
        label_col: index of the label column.
        fields: (declaration, column index) of each field, in model order.
        bag_sep: separator of the tokens inside a bag cell.
        positive: label values that are a click (any other non-empty value is a 0);
            None: labels are the numbers 0 and 1.
        label_hint: appended to every label problem (how the user can fix it).
    """

    n_cols: int
    label_col: int
    fields: tuple[tuple[FieldDecl, int], ...]
    bag_sep: str = "|"
    positive: frozenset[str] | None = None
    label_hint: str = ""


def iter_rows(fh, delimiter: str, quoted: bool) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, cells) of each non-empty line. `quoted` uses the csv module
    (quotes may hide delimiters); otherwise a plain, faster str.split."""
    if quoted:
        reader = csv.reader(fh, delimiter=delimiter)
        for cells in reader:
            if cells:
                yield reader.line_num, cells
        return
    for n, line in enumerate(fh, 1):
        line = line.rstrip("\r\n")
        if line:
            yield n, line.split(delimiter)


def to_chunk(
    path: str, cols: Sequence[Sequence[str]], lines: Sequence[int], layout: Layout, bad: BadLines
) -> RawChunk | None:
    """Validated chunk from the file's columns (cols[c] = column c of every row, all rows
    with the right column count); bad rows are reported (raise or counted skip) in line
    order and dropped. None when no row survives.

    Args:
        path: the file (for error messages).
        cols: the cells, column-major.
        lines: 1-based line number of each row.
        layout: label and field positions.
        bad: bad-line accounting of this pass.
    """
    labels, problems = parse_labels(cols[layout.label_col], layout.positive)
    problems = {i: p + layout.label_hint for i, p in problems.items()}
    numbers = {}
    for decl, c in layout.fields:
        if decl.kind == "numerical":
            numbers[decl.name], field_problems = parse_numbers(cols[c], decl.name)
            for i, p in field_problems.items():
                problems.setdefault(i, p)
    if problems:
        for i in sorted(problems):
            bad.report(path, lines[i], problems[i])
        keep = np.ones(len(labels), dtype=bool)
        keep[list(problems)] = False
        if not keep.any():
            return None
        idx = np.flatnonzero(keep)
        labels = labels[keep]
        cols = {c: [cols[c][i] for i in idx] for _, c in layout.fields}
        numbers = {k: v[keep] for k, v in numbers.items()}
    columns = {}
    for decl, c in layout.fields:
        if decl.kind == "numerical":
            columns[decl.name] = numbers[decl.name]
        elif decl.kind == "bag":
            columns[decl.name] = split_bag(cols[c], layout.bag_sep)
        else:
            columns[decl.name] = list(cols[c])
    return RawChunk(labels, columns)


def batched(items: Iterator, size: int) -> Iterator[list]:
    """Lists of up to `size` consecutive items. The cyclic GC is paused while a list
    fills (the items are built lazily, so parsing happens then): otherwise every few
    thousand new row lists trigger a collection that rescans all rows held so far, which
    makes parsing ~3x slower. Rows of strings form no cycles, so nothing leaks."""
    while True:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            batch = list(islice(items, size))
        finally:
            if was_enabled:
                gc.enable()
        if not batch:
            return
        yield batch


def iter_delimited(
    path: str, layout: Layout, delimiter: str, chunk_rows: int, bad: BadLines, *, header: bool, quoted: bool
) -> Iterator[RawChunk]:
    """Chunks of a delimited file; a row with the wrong column count is a bad line.

    Args:
        path: the file (.gz is decompressed on the fly).
        layout: label and field positions.
        delimiter: cell separator.
        chunk_rows: rows per chunk.
        bad: bad-line accounting of this pass.
        header: skip the first line.
        quoted: honour CSV quoting (slower); otherwise a delimiter always separates cells.
    """
    with open_text(path) as fh:
        if quoted:
            yield from _quoted_chunks(fh, path, layout, delimiter, chunk_rows, bad, header)
            return
        first = 1
        if header:
            fh.readline()
            first = 2
        while lines := list(islice(fh, chunk_rows)):
            chunk = _plain_chunk(lines, first, path, layout, delimiter, bad)
            first += len(lines)
            if chunk is not None:
                yield chunk


def _plain_chunk(lines: list[str], first: int, path: str, layout: Layout, delim: str, bad: BadLines) -> RawChunk | None:
    """Column-major cells without a Python object per row: join the lines, split once,
    take every n_cols-th cell. Transposing per-row lists instead is the slowest part of
    parsing (one cache miss per cell)."""
    numbers: Sequence[int] = range(first, first + len(lines))
    widths = [line.count(delim) for line in lines]
    if widths.count(layout.n_cols - 1) != len(lines):
        good, numbers = [], []
        for i, (line, w) in enumerate(zip(lines, widths)):
            if w == layout.n_cols - 1:
                good.append(line)
                numbers.append(first + i)
            elif line.strip():  # blank lines are skipped silently
                bad.report(path, first + i, f"expected {layout.n_cols} columns, found {w + 1}")
        lines = good
        if not lines:
            return None
    flat = delim.join(lines).split(delim)  # each line's newline ends its last cell
    n = layout.n_cols
    cols: dict[int, Sequence[str]] = {c: flat[c::n] for c in {layout.label_col, *(c for _, c in layout.fields)}}
    if n - 1 in cols:
        cols[n - 1] = [v.rstrip("\r\n") for v in cols[n - 1]]
    return to_chunk(path, cols, numbers, layout, bad)


def _quoted_chunks(fh, path: str, layout: Layout, delim: str, chunk_rows: int, bad: BadLines, header: bool):
    """Chunks via the csv module (quotes may hide delimiters): rows, then transposed."""

    def well_formed(cells_of):
        for n, cells in cells_of:
            if len(cells) == layout.n_cols:
                yield n, cells
            else:
                bad.report(path, n, f"expected {layout.n_cols} columns, found {len(cells)}")

    cells_of = iter_rows(fh, delim, quoted=True)
    if header:
        next(cells_of, None)
    for batch in batched(well_formed(cells_of), chunk_rows):
        lines, rows = zip(*batch)
        chunk = to_chunk(path, list(zip(*rows)), lines, layout, bad)
        if chunk is not None:
            yield chunk


def read_header(path: str, delimiter: str, quoted: bool) -> list[str]:
    """The cells of the first line (stripped)."""
    with open_text(path) as fh:
        first = next(iter_rows(fh, delimiter, quoted), None)
    if first is None or first[0] != 1:
        raise DataError(path, 1, "expected a header line first")
    return [c.strip() for c in first[1]]
