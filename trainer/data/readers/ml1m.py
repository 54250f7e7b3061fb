"""MovieLens-1M from its directory: ratings.dat, users.dat, movies.dat (`::`-separated,
latin-1). Same fields as ML-100K; release_year comes from the title's "(1995)" and the
genres bag from the `|`-separated genre list."""

from __future__ import annotations

import os
from typing import Iterator

from trainer.data.readers.base import BadLines, DataError, FieldDecl, FileReader, RawChunk
from trainer.data.readers.movielens import FIELDS, LABEL, Items, Users, iter_joined, year_from_title
from trainer.data.readers.text import file_fingerprint, iter_rows, open_text

SEP = "::"
ENCODING = "latin-1"  # the GroupLens files are not UTF-8 (accented titles)
USERS_COLUMNS = "UserID::Gender::Age::Occupation::Zip-code"
MOVIES_COLUMNS = "MovieID::Title::Genres"


class MovieLens1MReader(FileReader):
    """Streams ratings.dat joined with users.dat and movies.dat.

    Args:
        path: the directory holding the three .dat files (e.g. the unpacked ml-1m.zip).
        max_bad_lines: malformed lines that may be skipped (counted) before DataError.
    """

    dataset_id = "movielens1m"
    label = LABEL

    def __init__(self, path: str, max_bad_lines: int = 0):
        super().__init__(path, max_bad_lines)
        if not os.path.isdir(self.path):
            raise DataError(
                self.path,
                None,
                "not a directory: expected the unpacked ml-1m folder with ratings.dat, users.dat, movies.dat",
            )
        self._files = [os.path.join(self.path, f) for f in ("ratings.dat", "users.dat", "movies.dat")]
        file_fingerprint(*self._files)  # fail now if one is missing

    def fields(self) -> list[FieldDecl]:
        return list(FIELDS)

    def fingerprint(self) -> str:
        return f"ml1m|{file_fingerprint(*self._files)}|bad={self.max_bad_lines}"

    def _chunks(self, chunk_rows: int, bad: BadLines) -> Iterator[RawChunk]:
        ratings, users_path, movies_path = self._files
        users: Users = {c[0]: (c[2], c[1], c[3], c[4]) for c in _rows(users_path, USERS_COLUMNS, bad)}
        items: Items = {
            c[0]: (year_from_title(c[1]), c[2].split("|") if c[2] else []) for c in _rows(movies_path, MOVIES_COLUMNS, bad)
        }
        with open_text(ratings, ENCODING) as fh:
            yield from iter_joined(ratings, iter_rows(fh, SEP, quoted=False), users, items, chunk_rows, bad)


def _rows(path: str, columns: str, bad: BadLines) -> Iterator[list[str]]:
    """The cells of each line of the .dat file at `path` that has one cell per name in
    `columns` ("A::B::C"); other lines are reported to `bad` and skipped."""
    width = len(columns.split(SEP))
    with open_text(path, ENCODING) as fh:
        for n, c in iter_rows(fh, SEP, quoted=False):
            if len(c) != width:
                bad.report(path, n, f"expected {width} columns ({columns}), found {len(c)}")
                continue
            yield c
