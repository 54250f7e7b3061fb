"""Criteo display-ads TSV: label, I1..I13 (integers), C1..C26 (hex tokens); empty = missing.

No header. Works on the Kaggle `train.txt` and the 1TB `day_N(.gz)` files alike.
"""

from __future__ import annotations

from typing import Iterator

from trainer.data.readers.base import BadLines, FieldDecl, FileReader, RawChunk
from trainer.data.readers.text import Layout, file_fingerprint, iter_delimited

N_NUMERICAL, N_CATEGORICAL = 13, 26
FIELDS = [FieldDecl(f"I{i + 1}", "numerical") for i in range(N_NUMERICAL)] + [
    FieldDecl(f"C{i + 1}", "categorical") for i in range(N_CATEGORICAL)
]


class CriteoReader(FileReader):
    """Streams the Criteo TSV at `path`, optionally .gz."""

    dataset_id = "criteo"
    label = "label"

    def __init__(self, path: str, max_bad_lines: int = 0):
        super().__init__(path, max_bad_lines)
        file_fingerprint(self.path)  # fail now, not at the first pass, if the file is absent

    def fields(self) -> list[FieldDecl]:
        return list(FIELDS)

    def fingerprint(self) -> str:
        return f"criteo|{file_fingerprint(self.path)}|bad={self.max_bad_lines}"

    def _chunks(self, chunk_rows: int, bad: BadLines) -> Iterator[RawChunk]:
        layout = Layout(1 + len(FIELDS), 0, tuple((d, i + 1) for i, d in enumerate(FIELDS)))
        yield from iter_delimited(self.path, layout, "\t", chunk_rows, bad, header=False, quoted=False)
