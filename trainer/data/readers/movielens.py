"""What MovieLens-100K and -1M share: the field set, the label rule and the join of each
rating with its user's and item's attributes."""

from __future__ import annotations

import math
import re
from typing import Iterator

import numpy as np

from trainer.data.readers.base import BadLines, FieldDecl, RawChunk
from trainer.data.readers.text import batched

FIELDS = [
    FieldDecl("user_id", "categorical"),
    FieldDecl("item_id", "categorical"),
    FieldDecl("age", "categorical"),
    FieldDecl("gender", "categorical"),
    FieldDecl("occupation", "categorical"),
    FieldDecl("zip_code", "categorical"),
    FieldDecl("release_year", "categorical"),
    FieldDecl("genres", "bag"),
]
USER_FIELDS = ("age", "gender", "occupation", "zip_code")
LABEL = "rating"
CLICK_RATING = 4.0  # rating >= 4 is a click, as in the AutoDPQ / iHAS setups
YEAR_RE = re.compile(r"\((\d{4})\)\s*$")

Users = dict[str, tuple[str, str, str, str]]  # user_id → age, gender, occupation, zip_code
Items = dict[str, tuple[str, list[str]]]  # item_id → release_year, genres


def year_from_title(title: str) -> str:
    """ "Toy Story (1995)" → "1995"; "" when the title carries no year."""
    m = YEAR_RE.search(title)
    return m.group(1) if m else ""


def iter_joined(
    path: str, rows: Iterator[tuple[int, list[str]]], users: Users, items: Items, chunk_rows: int, bad: BadLines
) -> Iterator[RawChunk]:
    """Chunks of rating rows joined with user and item attributes.

    Args:
        path: the ratings file (for error messages).
        rows: (1-based line, cells) with cells = user_id, item_id, rating, timestamp.
        users: user attributes by user_id.
        items: item attributes by item_id.
        chunk_rows: rows per chunk.
        bad: bad-line accounting of this pass.
    """

    def valid():
        for n, cells in rows:
            problem = None
            if len(cells) != 4:
                problem = f"expected 4 columns (user, item, rating, timestamp), found {len(cells)}"
            elif cells[0] not in users:
                problem = f"user_id {cells[0]!r} has no user record"
            elif cells[1] not in items:
                problem = f"item_id {cells[1]!r} has no item record"
            else:
                try:
                    rating = float(cells[2])
                except ValueError:
                    rating = math.nan
                if not math.isfinite(rating):
                    problem = f"rating {cells[2]!r} is not a number"
            if problem:
                bad.report(path, n, problem)
            else:
                yield cells[0], cells[1], rating

    for buf in batched(valid(), chunk_rows):
        yield _chunk(buf, users, items)


def _chunk(buf: list[tuple[str, str, float]], users: Users, items: Items) -> RawChunk:
    user_ids, item_ids, ratings = zip(*buf)
    u = [users[x] for x in user_ids]
    it = [items[x] for x in item_ids]
    columns = {"user_id": list(user_ids), "item_id": list(item_ids)}
    for j, name in enumerate(USER_FIELDS):
        columns[name] = [a[j] for a in u]
    columns["release_year"] = [a[0] for a in it]
    columns["genres"] = [a[1] for a in it]
    labels = (np.asarray(ratings) >= CLICK_RATING).astype(np.float32)
    return RawChunk(labels, columns)
