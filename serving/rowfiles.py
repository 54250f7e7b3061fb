"""Files of request rows → (line number, row) pairs, for the tools that read them.

  jsonl  one JSON object per line, field name → value as a client sends it; blank lines
         are skipped.
  csv    a header of field names, then one row per line; every cell stays a raw token
         (what a Row's `token` carries), bag cells split on "|" ("" = empty bag).

Rows keep the number of the line they came from, so an error found later (the encoder
refusing a value) can still name it. Imports neither torch nor grpc.
"""

from __future__ import annotations

import csv
import json
from typing import IO, Iterable, Iterator

BAG_SEPARATOR = "|"
Numbered = tuple[int, dict]  # (line number in the input, row)


class InputError(ValueError):
    """Bad input at one line of a rows file (a line that is no row, or a row the encoder
    refused); the message starts with the line number."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")


def text_lines(fh: IO[bytes]) -> Iterator[str]:
    """The lines of a binary file as text, so a bad byte is reported with its line."""
    for n, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a spreadsheet's BOM is no field name
        except UnicodeDecodeError as e:
            raise InputError(n, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_jsonl(lines: Iterable[str]) -> Iterator[Numbered]:
    """Rows of a JSON-lines file, values as JSON typed them."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(n, f"not JSON ({e})") from None
        if not isinstance(row, dict):
            raise InputError(n, "a row must be a JSON object of field → value")
        yield n, row


def read_csv(lines: Iterable[str], kinds: dict[str, str], delimiter: str) -> Iterator[Numbered]:
    """Rows of a delimited file; cells stay tokens, bag cells (by `kinds`, field name →
    kind) become lists. A column no field has stays a token, for the encoder to name."""
    reader = csv.reader(lines, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    dup = next((name for name in header if header.count(name) > 1), None)
    if dup is not None:
        raise InputError(1, f"column {dup!r} given more than once")
    bags = [kinds.get(name) == "bag" for name in header]
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a NUL byte, an unclosed quote at the end
            raise InputError(reader.line_num, str(e)) from None
        if not cells:
            continue
        n = reader.line_num  # a quoted cell may span lines; this is the row's last one
        if len(cells) != len(header):
            raise InputError(n, f"{len(cells)} cells for {len(header)} columns")
        yield n, {name: (cell.split(BAG_SEPARATOR) if cell else []) if bag else cell for name, cell, bag in zip(header, cells, bags)}
