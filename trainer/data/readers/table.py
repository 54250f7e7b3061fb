"""Any delimited file with a header: the config names the label column and each field's
kind, so users bring their own data without writing a reader."""

from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

from trainer.data.readers.base import KINDS, NAME_RE, BadLines, DataError, FieldDecl, FileReader, RawChunk
from trainer.data.readers.text import Layout, file_fingerprint, iter_delimited, read_header


class TableReader(FileReader):
    """Streams a CSV/TSV with a header line.

    Args:
        path: the file (optionally .gz).
        label: name of the label column (0/1 numbers unless `label_positive` is given).
        fields: column name → kind ("categorical", "numerical" or "bag"), in model order;
            columns not named here are ignored.
        delimiter: one character, e.g. "," or "\\t".
        bag_sep: separator of the tokens inside a bag cell.
        max_bad_lines: malformed lines that may be skipped (counted) before DataError.
        label_positive: label values counted as a click (e.g. ["yes", "click"]); every
            other non-empty value is a 0. Empty: labels must be 0/1 numbers.
    """

    def __init__(
        self,
        path: str,
        label: str,
        fields: dict[str, str],
        *,
        delimiter: str = ",",
        bag_sep: str = "|",
        max_bad_lines: int = 0,
        label_positive: Sequence[str] = (),
    ):
        super().__init__(path, max_bad_lines)
        self.label, self.delimiter, self.bag_sep = label, delimiter, bag_sep
        stem = os.path.basename(self.path).split(".")[0]
        self.dataset_id = f"table-{re.sub(r'[^A-Za-z0-9_.-]', '_', stem)}"
        bad_names = [n for n in fields if not NAME_RE.match(n)]
        bad_kinds = {n: k for n, k in fields.items() if k not in KINDS}
        if bad_names or bad_kinds or not fields or label in fields:
            raise ValueError(
                f"table fields: need >= 1 field, not the label {label!r}; "
                f"bad names {bad_names}; bad kinds {bad_kinds} (kinds: {KINDS})"
            )
        header = read_header(self.path, delimiter, quoted=True)
        missing = [c for c in (label, *fields) if c not in header]
        if missing:
            raise DataError(self.path, 1, f"header lacks column(s) {missing}; found {header}")
        pos = {name: i for i, name in enumerate(header)}
        decls = tuple((FieldDecl(n, k), pos[n]) for n, k in fields.items())
        positive = frozenset(v.strip() for v in label_positive) if label_positive else None
        hint = "" if positive else " (data.label_positive names the values that count as a click)"
        self._layout = Layout(len(header), pos[label], decls, bag_sep, positive, hint)

    def fields(self) -> list[FieldDecl]:
        return [d for d, _ in self._layout.fields]

    def fingerprint(self) -> str:
        decl = ",".join(f"{d.name}:{d.kind}" for d in self.fields())
        fmt = f"{self.delimiter!r}|{self.bag_sep!r}|bad={self.max_bad_lines}"
        if self._layout.positive is not None:  # absent by default, so older caches stay valid
            fmt += f"|positive={sorted(self._layout.positive)!r}"
        return f"table|{file_fingerprint(self.path)}|{self.label}|{decl}|{fmt}"

    def _chunks(self, chunk_rows: int, bad: BadLines) -> Iterator[RawChunk]:
        yield from iter_delimited(self.path, self._layout, self.delimiter, chunk_rows, bad, header=True, quoted=True)
