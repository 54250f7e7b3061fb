"""Avazu CTR CSV: header `id,click,hour,C1,banner_pos,...,C21`; id is dropped, click is the
label, the other 22 columns (hour included, as the raw YYMMDDHH token) are categorical."""

from __future__ import annotations

from typing import Iterator

from trainer.data.readers.base import BadLines, DataError, FieldDecl, FileReader, RawChunk
from trainer.data.readers.text import Layout, file_fingerprint, iter_delimited, read_header

CATEGORICAL = (
    "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip


class AvazuReader(FileReader):
    """Streams the Avazu CSV at `path`, optionally .gz (columns found by header name, in any order)."""

    dataset_id = "avazu"
    label = "click"

    def __init__(self, path: str, max_bad_lines: int = 0):
        super().__init__(path, max_bad_lines)
        header = read_header(self.path, ",", quoted=True)
        missing = [c for c in ("id", "click", *CATEGORICAL) if c not in header]
        if missing:
            raise DataError(self.path, 1, f"header lacks Avazu column(s) {missing}; found {header}")
        pos = {name: i for i, name in enumerate(header)}
        fields = tuple((FieldDecl(c, "categorical"), pos[c]) for c in CATEGORICAL)
        self._layout = Layout(len(header), pos["click"], fields)

    def fields(self) -> list[FieldDecl]:
        return [d for d, _ in self._layout.fields]

    def fingerprint(self) -> str:
        return f"avazu|{file_fingerprint(self.path)}|bad={self.max_bad_lines}"

    def _chunks(self, chunk_rows: int, bad: BadLines) -> Iterator[RawChunk]:
        # Avazu cells never contain commas or quotes: the fast unquoted path is safe, and
        # a stray quoted comma would show up as a wrong column count, not bad data.
        yield from iter_delimited(self.path, self._layout, ",", chunk_rows, bad, header=True, quoted=False)
