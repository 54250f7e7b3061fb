"""Request builders and small helpers shared by the gRPC tests."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2
from serving_fixtures import make_spec

from serving._proto.embstack.v1 import inference_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GOOD = {"user": "u3", "item": 7, "age": 31.0, "genres": ["drama", "noir"], "city": "oslo"}


def value(v) -> pb.Value:
    if isinstance(v, str):
        return pb.Value(token=v)
    if isinstance(v, bool):
        raise TypeError(v)
    if isinstance(v, int):
        return pb.Value(id=v)
    if isinstance(v, float):
        return pb.Value(number=v)
    if all(isinstance(x, str) for x in v):
        return pb.Value(tokens=pb.TokenList(values=v))
    return pb.Value(ids=pb.IdList(values=v))


def row_request(rows) -> pb.ScoreRequest:
    return pb.ScoreRequest(rows=[pb.Row(fields={k: value(v) for k, v in r.items()}) for r in rows])


def column_request(spec, rows) -> pb.ScoreRequest:
    """Columnar form: ids for categorical fields and bags; numbers for numerical fields, or
    tokens (floats written with repr, which round-trips) when some value is a token."""
    cols = []
    for f in spec.fields:
        values = [r[f.name] for r in rows]
        if f.kind == "numerical":
            if any(isinstance(v, str) for v in values):
                cols.append(pb.Column(field=f.name, tokens=pb.TokenList(values=[v if isinstance(v, str) else repr(v) for v in values])))
            else:
                cols.append(pb.Column(field=f.name, numbers=pb.NumberList(values=values)))
        elif f.kind == "bag":
            bags = [[b if isinstance(b, int) else f.token_id(b) for b in v] for v in values]
            cols.append(pb.Column(field=f.name, ids=pb.IdList(values=[i for b in bags for i in b]), lengths=[len(b) for b in bags]))
        else:
            cols.append(pb.Column(field=f.name, ids=pb.IdList(values=[v if isinstance(v, int) else f.token_id(v) for v in values])))
    return pb.ScoreRequest(columns=pb.ColumnBatch(num_rows=len(rows), columns=cols))


def rows_pb(n=3, i=0, **change) -> pb.ScoreRequest:
    """n copies of GOOD in row form; row i's fields replaced by `change` (None deletes)."""
    req = row_request([GOOD] * n)
    for k, v in change.items():
        if v is None:
            del req.rows[i].fields[k]
        else:
            req.rows[i].fields[k].CopyFrom(v)
    return req


def cols_pb(num_rows=3, **change) -> pb.ScoreRequest:
    """3 copies of GOOD in columnar form claiming `num_rows` rows; columns replaced by `change`."""
    req = column_request(make_spec(), [GOOD] * 3)
    req.columns.num_rows = num_rows
    cols = {c.field: c for c in req.columns.columns}
    for k, v in change.items():
        if v is None:
            cols.pop(k)
        else:
            cols[k] = v
    del req.columns.columns[:]
    req.columns.columns.extend(cols.values())
    return req


def health_status(health, service=""):
    return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@dataclass
class HeldPredictor:
    """Predictor.predict patched to block until `gate` is set (or `wait` s pass); `entered` is
    set once a call is inside, `scored` records the rows of every call; `real` is the original."""

    wait: float
    real: object
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    scored: list = field(default_factory=list)


def hold_predictor(monkeypatch, wait: float) -> HeldPredictor:
    from serving.predictor import Predictor

    held = HeldPredictor(wait, Predictor.predict)

    def predict(self, batch):
        held.entered.set()
        held.gate.wait(held.wait)
        held.scored.append(batch.num_rows)
        return held.real(self, batch)

    monkeypatch.setattr(Predictor, "predict", predict)
    return held
