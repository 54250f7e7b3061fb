"""MovieLens-100K as shipped inside the recbole 1.2.1 wheel, read with zipfile (recbole
itself is never installed or imported).

Atomic files are tab-separated with a typed header (`user_id:token	item_id:token ...`);
`ml-100k.item`'s `class` column is the space-separated genre list.

`numerical` reads some attributes as numbers instead of tokens (the AutoDis variant:
age, release_year); a value that is not a number there ("unkonwn", "V") reads as missing.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from serving.features import MISSING
from trainer.data.readers.base import BadLines, DataError, FieldDecl, FileReader, RawChunk
from trainer.data.readers.movielens import FIELDS, LABEL, Items, Users, iter_joined
from trainer.data.readers.text import file_fingerprint, iter_rows

NUMERIC_ATTRIBUTES = ("age", "release_year")
DEFAULT_WHEEL = Path(__file__).resolve().parents[3] / "data" / "downloads" / "recbole-1.2.1-py3-none-any.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"


class MovieLens100KReader(FileReader):
    """Streams the 100,000 ratings of ML-100K joined with user and item attributes.

    Args:
        path: the recbole-1.2.1 wheel (default: data/downloads/ under the repository).
        max_bad_lines: malformed lines that may be skipped (counted) before DataError.
        numerical: attributes (of NUMERIC_ATTRIBUTES) read as numerical fields.
    """

    dataset_id = "movielens100k"
    label = LABEL

    def __init__(self, path: str | Path | None = None, max_bad_lines: int = 0, numerical: tuple[str, ...] = ()):
        super().__init__(path or DEFAULT_WHEEL, max_bad_lines)
        unknown = sorted(set(numerical) - set(NUMERIC_ATTRIBUTES))
        if unknown:
            raise ValueError(f"movielens100k: {unknown} cannot be read as numbers; only {list(NUMERIC_ATTRIBUTES)}")
        self.numerical = tuple(n for n in NUMERIC_ATTRIBUTES if n in numerical)
        if not Path(self.path).is_file():
            raise DataError(
                self.path, None, "recbole wheel not found: run `make setup` (or scripts/setup.sh), which downloads it"
            )

    def fields(self) -> list[FieldDecl]:
        return [replace(f, kind="numerical") if f.name in self.numerical else f for f in FIELDS]

    def fingerprint(self) -> str:
        as_numbers = f"|numerical={','.join(self.numerical)}" if self.numerical else ""
        return f"ml100k|{file_fingerprint(self.path)}|bad={self.max_bad_lines}{as_numbers}"

    def _chunks(self, chunk_rows: int, bad: BadLines) -> Iterator[RawChunk]:
        try:
            with zipfile.ZipFile(self.path) as z:
                users = self._users(z, bad)
                items = self._items(z, bad)
                where, rows = self._table(z, "inter", ("user_id", "item_id", "rating", "timestamp"), bad)
                for chunk in iter_joined(where, rows, users, items, chunk_rows, bad):
                    for name in self.numerical:
                        chunk.columns[name] = [v if _is_number(v) else MISSING for v in chunk.columns[name]]
                    yield chunk
        except zipfile.BadZipFile as e:
            raise DataError(self.path, None, f"not a readable wheel/zip: {e}") from None

    def _table(
        self, z: zipfile.ZipFile, ext: str, want: tuple[str, ...], bad: BadLines
    ) -> tuple[str, Iterator[tuple[int, list[str]]]]:
        """(display path, rows cut to the `want` columns in that order) of one atomic file;
        rows with the wrong column count are reported to `bad` and left out."""
        member = MEMBER.format(ext)
        where = f"{self.path}!{member}"
        try:
            fh = io.TextIOWrapper(z.open(member), encoding="utf-8", errors="replace", newline="")
        except KeyError:
            raise DataError(self.path, None, f"no {member} inside: not the recbole 1.2.1 wheel?") from None
        rows = iter_rows(fh, "\t", quoted=False)
        _, header = next(rows, (1, []))
        names = [h.split(":")[0].strip() for h in header]
        missing = [w for w in want if w not in names]
        if missing:
            raise DataError(where, 1, f"header lacks column(s) {missing}; found {names}")
        pos = [names.index(w) for w in want]

        def picked():
            with fh:
                for n, cells in rows:
                    if len(cells) != len(names):
                        bad.report(where, n, f"expected {len(names)} columns, found {len(cells)}")
                        continue
                    yield n, [cells[p] for p in pos]

        return where, picked()

    def _users(self, z: zipfile.ZipFile, bad: BadLines) -> Users:
        _, rows = self._table(z, "user", ("user_id", "age", "gender", "occupation", "zip_code"), bad)
        return {c[0]: (c[1], c[2], c[3], c[4]) for _, c in rows}

    def _items(self, z: zipfile.ZipFile, bad: BadLines) -> Items:
        _, rows = self._table(z, "item", ("item_id", "release_year", "class"), bad)
        return {c[0]: (c[1], c[2].split()) for _, c in rows}


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
