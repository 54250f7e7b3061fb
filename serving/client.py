"""Score rows from a JSON-lines file against a running server and print the scores.

    .venv/bin/python -m serving.client --target 127.0.0.1:50051 --rows rows.jsonl
    .venv/bin/python -m serving.client --target HOST:PORT --rows - --columnar < rows.jsonl
    .venv/bin/python -m serving.client --target HOST:PORT --rows rows.jsonl --tls-ca ca.pem --token-file token

Each input line is one row, a JSON object field name → raw value, typed as JSON types:
  categorical  "token" (mapped through the bundle's vocab; unseen → OOV) or an integer id
  numerical    a number, or a "token" as in the data files ("" = missing)
  bag          a list of "tokens" or a list of integer ids
Each output line is JSON: {"row": i, "probability": p, "cluster": c, "version": v}.
The client asks GetModelInfo for the field kinds first, sends at most the server's
max_batch_rows per request, and exits 1 with the server's message on an error status.

Imports neither torch nor the model code: the helpers here (rows → request messages,
random valid columnar requests) are what `serving.loadtest` and the tests use.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable, Sequence

import grpc
import numpy as np

from serving import channels
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.rowfiles import read_jsonl


def kinds_of(info: pb.ModelInfo) -> dict[str, str]:
    return {f.name: f.kind for f in info.fields}


def value(v: Any, kind: str) -> pb.Value:
    """A JSON value of a field of `kind` → the proto Value (see the module docstring)."""
    if isinstance(v, bool) or v is None:
        raise ValueError(f"{v!r} is not a field value")
    if isinstance(v, str):
        return pb.Value(token=v)
    if isinstance(v, (int, np.integer)):
        return pb.Value(number=float(v)) if kind == "numerical" else pb.Value(id=int(v))
    if isinstance(v, (float, np.floating)):
        return pb.Value(number=float(v))
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, str) for x in v):
            return pb.Value(tokens=pb.TokenList(values=list(v)))
        return pb.Value(ids=pb.IdList(values=[int(x) for x in v]))
    raise ValueError(f"{v!r} ({type(v).__name__}) is not a field value")


def row_request(rows: Sequence[dict], kinds: dict[str, str]) -> pb.ScoreRequest:
    """Readable form: one Row message per row. Fields the server does not know are sent
    as they are (kind guessed from the value) so the server can name them."""
    return pb.ScoreRequest(rows=[pb.Row(fields={k: value(v, kinds.get(k, "")) for k, v in r.items()}) for r in rows])


def column_request(rows: Sequence[dict], kinds: dict[str, str]) -> pb.ScoreRequest:
    """Columnar form: one packed array per field. Every value of a field must take one
    form (all ids, all tokens, all numbers); raises ValueError otherwise."""
    cols = []
    for name, kind in kinds.items():
        values = [r.get(name) for r in rows]
        if kind == "bag":
            lengths = [len(v) if isinstance(v, (list, tuple)) else 0 for v in values]
            flat = [x for v in values for x in (v or [])]
            cols.append(_column(name, flat, kind, lengths))
        else:
            cols.append(_column(name, values, kind, []))
    return pb.ScoreRequest(columns=pb.ColumnBatch(num_rows=len(rows), columns=cols))


def _column(name: str, values: list, kind: str, lengths: list[int]) -> pb.Column:
    if all(isinstance(v, str) for v in values):
        return pb.Column(field=name, tokens=pb.TokenList(values=values), lengths=lengths)
    if kind == "numerical" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pb.Column(field=name, numbers=pb.NumberList(values=[float(v) for v in values]))
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return pb.Column(field=name, ids=pb.IdList(values=[int(v) for v in values]), lengths=lengths)
    raise ValueError(f"field {name!r}: the columnar form needs every value in one form (all ids, all tokens or all numbers)")


def random_columns(info: pb.ModelInfo, num_rows: int, rng: np.random.Generator, max_bag: int = 3) -> pb.ScoreRequest:
    """A valid columnar request of random pre-encoded ids (numbers for numerical fields):
    what a high-throughput caller sends."""
    cols = []
    for f in info.fields:
        if f.kind == "numerical":
            cols.append(pb.Column(field=f.name, numbers=pb.NumberList(values=rng.exponential(10.0, num_rows).tolist())))
        elif f.kind == "bag":
            lengths = rng.integers(0, max_bag + 1, num_rows)
            ids = rng.integers(0, f.num_embeddings, int(lengths.sum()))
            cols.append(pb.Column(field=f.name, ids=pb.IdList(values=ids.tolist()), lengths=lengths.tolist()))
        else:
            cols.append(pb.Column(field=f.name, ids=pb.IdList(values=rng.integers(0, f.num_embeddings, num_rows).tolist())))
    return pb.ScoreRequest(columns=pb.ColumnBatch(num_rows=num_rows, columns=cols))


def read_rows(lines: Iterable[str]) -> list[dict]:
    """The rows of a JSON-lines file; raises ValueError naming the line of a bad one."""
    return [row for _, row in read_jsonl(lines)]


def score(stub: pb_grpc.InferenceStub, rows: list[dict], info: pb.ModelInfo, *, columnar: bool = False, timeout: float = 10.0,
          metadata=None):
    """Scores `rows` in chunks of at most info.max_batch_rows; yields (row index, probability,
    cluster, version). Raises grpc.RpcError on an error status. `metadata`: per-call
    metadata (the bearer token)."""
    kinds = kinds_of(info)
    step = max(1, info.max_batch_rows or len(rows) or 1)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        request = column_request(chunk, kinds) if columnar else row_request(chunk, kinds)
        reply = stub.Score(request, timeout=timeout, metadata=metadata)
        for i, (p, c) in enumerate(zip(reply.probabilities, reply.clusters)):
            yield start + i, p, c, reply.bundle_version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.client", description="score JSON-lines rows on an embstack server",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n  python -m serving.client --target 127.0.0.1:50051 --rows rows.jsonl")
    ap.add_argument("--target", required=True, help="HOST:PORT of the server")
    ap.add_argument("--rows", required=True, help="JSON-lines file of rows ('-' = stdin)")
    ap.add_argument("--columnar", action="store_true", help="send the columnar form (every value of a field in one form)")
    ap.add_argument("--timeout", type=float, default=10.0, help="deadline per request, seconds")
    channels.add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        if args.rows == "-":
            rows = read_rows(sys.stdin)
        else:
            with open(args.rows) as fh:
                rows = read_rows(fh)
    except (OSError, ValueError) as e:
        print(f"client: {args.rows}: {e}", file=sys.stderr)
        return 2
    try:
        channel, metadata = channels.open_channel(args), channels.call_metadata(args)
    except (OSError, ValueError) as e:
        print(f"client: {e}", file=sys.stderr)
        return 2
    with channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout, metadata=metadata)
            for i, p, c, version in score(stub, rows, info, columnar=args.columnar, timeout=args.timeout, metadata=metadata):
                print(json.dumps({"row": i, "probability": p, "cluster": c, "version": version}))
        except grpc.RpcError as e:
            print(f"client: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"client: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
