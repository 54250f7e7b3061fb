"""Offline scoring: a file of rows → a file of scores, through the server's request path
but with no server.

    .venv/bin/python -m serving.score --bundle runs/ihas_ml100k/bundle --input rows.jsonl --output scores.csv

The bundle is loaded, verified and warmed up as the server loads it, and each chunk of
rows goes through `Predictor.predict_rows`: the Encoder that validates a Score request's
rows (a value's JSON type says token / id / number, as `serving.client` puts it on the
wire), then the same routing and cluster models. So a row scores here as it would on the
server, and bad input gets the server's message.

Input format by extension, or --format:
  jsonl  .jsonl / .json: one JSON object per line, field name → value as `serving.client`
         sends it: categorical "token" or integer id; numerical number or "token"
         ("" = missing); bag list of "tokens" or of integer ids. Blank lines are skipped.
  csv    .csv (tsv: .tsv, tab-separated): a header of field names, then one row per line.
         Every cell is a raw token as in the data files: numerical cells are parsed as the
         server parses a token ("" = missing); bag cells are tokens joined by "|" (""
         = empty bag, so a token holding "|" needs jsonl). A cell cannot say "id", so
         pre-encoded ids of a vocab field need jsonl (a pre-coded field's ids are its tokens).
Output format by extension (.csv / .tsv, .jsonl / .json) or --output-format: one line per
input row, in input order: probability, cluster, version (csv has that header line; jsonl
writes {"probability": p, "cluster": c, "version": v}).

Rows are read, scored and written --batch-size at a time, so files of any size stream.
Output goes to a temporary file beside --output, renamed at the end: after an error
nothing is left at --output. Exit code 0; 2 (one line on stderr) for bad input, naming its
line number, for a bundle that does not load and for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Iterable, Iterator

from serving.bundle import BundleError, load_bundle
from serving.encode import Limits
from serving.errors import InvalidRequest
from serving.predictor import Prediction, Predictor, RoutingError
from serving.rowfiles import InputError, Numbered, read_csv, read_jsonl, text_lines

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
DELIMITERS = {"csv": ",", "tsv": "\t"}


def score_rows(predictor: Predictor, rows: Iterable[Numbered], batch_size: int) -> Iterator[Prediction]:
    """Predictions of `rows`, `batch_size` rows a call. Raises InputError naming the line
    of the first row the encoder refuses."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, batch_size)):
        lines = [n for n, _ in chunk]
        try:
            yield predictor.predict_rows([row for _, row in chunk])
        except InvalidRequest as e:
            if e.row is None:
                raise InputError(lines[0], str(e)) from None
            where = f"field {e.field!r}: " if e.field is not None else ""
            raise InputError(lines[e.row], where + e.detail) from None


def write_scores(out: IO[str], fmt: str, predictions: Iterable[Prediction]) -> None:
    # tolist() gives Python floats: both formats print the float32 probability as repr,
    # the shortest text that reads back to the same value
    if fmt == "jsonl":
        for p in predictions:
            for prob, cluster in zip(p.probabilities.tolist(), p.clusters.tolist()):
                out.write(json.dumps({"probability": prob, "cluster": cluster, "version": p.version}) + "\n")
        return
    writer = csv.writer(out, delimiter=DELIMITERS[fmt], lineterminator="\n")
    writer.writerow(["probability", "cluster", "version"])
    for p in predictions:
        writer.writerows((prob, cluster, p.version) for prob, cluster in zip(p.probabilities.tolist(), p.clusters.tolist()))


def format_of(path: str, given: str | None, flag: str) -> str:
    fmt = given or FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the extension; give {flag}")
    return fmt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m serving.score",
        description="score a file of rows with a bundle, offline, as the gRPC server would",
        epilog="example: python -m serving.score --bundle runs/ihas_ml100k/bundle --input rows.jsonl --output scores.csv\n"
        "(csv input: a header of field names; bag cells are tokens joined by '|')",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--bundle", required=True, help="bundle directory (written by serving.bundle.write_bundle)")
    ap.add_argument("--input", required=True, help="rows: .jsonl/.json (JSON lines) or .csv/.tsv (header of field names)")
    ap.add_argument("--output", required=True, help="scores: .csv/.tsv or .jsonl/.json; written whole or not at all")
    ap.add_argument("--format", choices=("jsonl", "csv", "tsv"), default=None, help="input format (default: by extension)")
    ap.add_argument("--output-format", choices=("jsonl", "csv", "tsv"), default=None, help="output format (default: by extension)")
    ap.add_argument("--batch-size", type=int, default=4096, help="rows per model call (and read ahead)")
    ap.add_argument("--max-bag", type=int, default=Limits.max_bag, help="values per bag per row (the server's --max-bag)")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.max_bag < 0:
        ap.error("--batch-size must be ≥ 1 and --max-bag ≥ 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    # torch logs a note about its own API once per process; stderr is for the error line
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    try:
        in_fmt, out_fmt = format_of(args.input, args.format, "--format"), format_of(args.output, args.output_format, "--output-format")
        if not out.parent.is_dir():
            raise ValueError(f"output {out}: no directory {out.parent}")
        with open(args.input, "rb") as fh:  # opened first: a wrong path fails before the bundle loads
            predictor = Predictor(load_bundle(args.bundle), Limits(max_rows=args.batch_size, max_bag=args.max_bag))
            predictor.warm_up()  # what the server runs before a bundle takes traffic
            kinds = {f.name: f.kind for f in predictor.bundle.spec.fields}
            lines = text_lines(fh)
            rows = read_jsonl(lines) if in_fmt == "jsonl" else read_csv(lines, kinds, DELIMITERS[in_fmt])
            with open(tmp, "w", newline="", encoding="utf-8") as dst:
                write_scores(dst, out_fmt, score_rows(predictor, rows, args.batch_size))
        os.replace(tmp, out)
    except InputError as e:
        return _fail(tmp, f"{args.input}: {e}")
    except (BundleError, RoutingError, OSError, ValueError) as e:
        return _fail(tmp, str(e))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return 0


def _fail(tmp: Path, message: str) -> int:
    tmp.unlink(missing_ok=True)
    print(f"score: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
    return 2


if __name__ == "__main__":
    sys.exit(main())
