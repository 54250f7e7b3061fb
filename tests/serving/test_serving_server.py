"""The gRPC server on 127.0.0.1:0 with the 2-cluster toy bundle."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving_fixtures import DIMS, in_memory_scores, make_spec, random_rows

import serving.server as server_mod
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.encode import Limits
from serving.predictor import Predictor
from serving.server import SERVICE, ServerConfig, create_server, start_app

MAX_ROWS = 64
CONFIG = ServerConfig(max_workers=2, max_message_bytes=256 * 1024, limits=Limits(max_rows=MAX_ROWS, max_bag=16))


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


@pytest.fixture(scope="module")
def served(bundle_dir):
    server, port = create_server(bundle_dir, "127.0.0.1:0", CONFIG)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.InferenceStub(channel), health_pb2_grpc.HealthStub(channel), channel
    channel.close()
    server.stop(None)


def health_status(health, service=""):
    return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_serving(served):
    _, health, _ = served
    assert health_status(health) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(health, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_served_scores_equal_offline(served, spec, models, bundle):
    stub, _, _ = served
    rows = random_rows(spec, MAX_ROWS, seed=21)
    reply = stub.Score(row_request(rows), timeout=10)
    got_p, got_c = np.array(reply.probabilities, dtype=np.float32), np.array(reply.clusters)
    offline = Predictor(bundle).predict_rows(rows)
    want_p, want_c = in_memory_scores(spec, *models, rows)
    assert reply.bundle_version == "toy-v1"
    assert np.array_equal(got_c, offline.clusters) and np.array_equal(got_c, want_c)
    assert set(got_c.tolist()) == {0, 1}
    assert float(np.max(np.abs(got_p - offline.probabilities))) < 1e-6
    assert float(np.max(np.abs(got_p - want_p))) < 1e-6

    columnar = stub.Score(column_request(spec, rows), timeout=10)
    assert list(columnar.clusters) == list(reply.clusters)
    assert float(np.max(np.abs(np.array(columnar.probabilities) - got_p))) < 1e-6


def test_model_info(served, spec):
    stub, _, _ = served
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.bundle_version == "toy-v1" and info.dataset == spec.dataset and info.has_router
    assert [f.name for f in info.fields] == spec.names
    assert [dict(c.dims) for c in info.clusters] == DIMS
    assert info.max_batch_rows == MAX_ROWS and info.fields[1].num_embeddings == 50


def test_reflection_lists_services(served):
    _, _, channel = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


GOOD = {"user": "u3", "item": 7, "age": 31.0, "genres": ["drama", "noir"], "city": "oslo"}


def rows_pb(n=3, i=0, **change) -> pb.ScoreRequest:
    req = row_request([GOOD] * n)
    for k, v in change.items():
        if v is None:
            del req.rows[i].fields[k]
        else:
            req.rows[i].fields[k].CopyFrom(v)
    return req


def cols_pb(num_rows=3, **change) -> pb.ScoreRequest:
    rows = [GOOD] * 3
    req = column_request(make_spec(), rows)
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


BAD = [
    # (name, request, words the message must contain)
    ("empty request", pb.ScoreRequest(), ["empty batch"]),
    ("too many rows", row_request([GOOD] * (MAX_ROWS + 1)), [f"{MAX_ROWS + 1} rows exceeds the limit of {MAX_ROWS}"]),
    ("unknown field", rows_pb(i=2, colour=pb.Value(token="red")), ["row 2", "unknown field 'colour'"]),
    ("missing field", rows_pb(i=1, city=None), ["row 1", "missing field 'city'"]),
    ("unset value", rows_pb(i=1, city=pb.Value()), ["row 1", "'city'", "none of"]),
    ("number for categorical", rows_pb(i=0, city=pb.Value(number=1.0)), ["row 0", "'city'", "wrong type"]),
    ("id for numerical", rows_pb(i=2, age=pb.Value(id=3)), ["row 2", "'age'", "wrong type"]),
    ("token for bag", rows_pb(i=1, genres=pb.Value(token="drama")), ["row 1", "'genres'", "wrong type"]),
    ("tokens for categorical", rows_pb(i=1, user=pb.Value(tokens=pb.TokenList(values=["u1"]))), ["row 1", "'user'", "wrong type"]),
    ("NaN", rows_pb(i=2, age=pb.Value(number=float("nan"))), ["row 2", "'age'", "not finite"]),
    ("Inf", rows_pb(i=0, age=pb.Value(number=float("inf"))), ["row 0", "'age'", "not finite"]),
    ("bad numerical token", rows_pb(i=1, age=pb.Value(token="old")), ["row 1", "'age'", "not a number"]),
    ("id out of range", rows_pb(i=1, item=pb.Value(id=50)), ["row 1", "'item'", "out of range [0, 50)"]),
    ("negative id", rows_pb(i=2, user=pb.Value(id=-5)), ["row 2", "'user'", "out of range"]),
    ("bag id out of range", rows_pb(i=0, genres=pb.Value(ids=pb.IdList(values=[1, 99]))), ["row 0", "'genres'", "id 99"]),
    ("bag too long", rows_pb(i=0, genres=pb.Value(tokens=pb.TokenList(values=["x"] * 17))), ["row 0", "'genres'", "exceeds the limit 16"]),
    ("rows and columns", pb.ScoreRequest(rows=rows_pb().rows, columns=cols_pb().columns), ["either rows or columns"]),
    ("columns: no rows", cols_pb(num_rows=0), ["empty batch"]),
    ("columns: too many rows", cols_pb(num_rows=MAX_ROWS + 1), ["exceeds the limit"]),
    ("columns: row count mismatch", cols_pb(num_rows=4), ["3 values for 4 rows"]),
    ("columns: unknown", cols_pb(colour=pb.Column(field="colour", tokens=pb.TokenList(values=["a"] * 3))), ["unknown field 'colour'"]),
    ("columns: missing", cols_pb(city=None), ["missing field 'city'"]),
    ("columns: unset data", cols_pb(city=pb.Column(field="city")), ["'city'", "none of"]),
    ("columns: id out of range", cols_pb(item=pb.Column(field="item", ids=pb.IdList(values=[1, 2, 77]))), ["row 2", "'item'", "id 77"]),
    ("columns: NaN", cols_pb(age=pb.Column(field="age", numbers=pb.NumberList(values=[1.0, float("nan"), 2.0]))), ["row 1", "'age'", "not finite"]),
    ("columns: bag sum", cols_pb(genres=pb.Column(field="genres", ids=pb.IdList(values=[1, 2]), lengths=[1, 1, 1])), ["'genres'", "sum to 3 but 2"]),
    ("columns: bag lengths count", cols_pb(genres=pb.Column(field="genres", ids=pb.IdList(values=[1]), lengths=[1])), ["'genres'", "1 bag lengths for 3 rows"]),
    ("columns: bag negative", cols_pb(genres=pb.Column(field="genres", ids=pb.IdList(values=[1]), lengths=[2, -1, 0])), ["row 1", "'genres'", "negative"]),
    ("columns: bag id", cols_pb(genres=pb.Column(field="genres", ids=pb.IdList(values=[1, 9]), lengths=[0, 0, 2])), ["row 2", "'genres'", "id 9"]),
    ("columns: lengths on categorical", cols_pb(city=pb.Column(field="city", ids=pb.IdList(values=[1, 1, 1]), lengths=[1, 1, 1])), ["'city'", "lengths are for bag"]),
]


def test_malformed_requests_are_invalid_argument_and_harmless(served, spec):
    stub, health, _ = served
    golden = row_request(random_rows(spec, 20, seed=5))
    before = stub.Score(golden, timeout=10)
    for name, request, words in BAD:
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(request, timeout=10)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.code(), err.details())
        for w in words:
            assert w in err.details(), (name, err.details())
    # a duplicate column
    dup = cols_pb()
    dup.columns.columns.append(dup.columns.columns[0])
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(dup, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than once" in info.value.details()
    assert health_status(health) == health_pb2.HealthCheckResponse.SERVING
    after = stub.Score(golden, timeout=10)
    assert list(after.probabilities) == list(before.probabilities) and list(after.clusters) == list(before.clusters)


def test_oversized_message_is_resource_exhausted(served):
    stub, health, _ = served
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(rows_pb(i=0, user=pb.Value(token="x" * (300 * 1024))), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health_status(health) == health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_not_serving_while_loading(bundle_dir, monkeypatch):
    release = threading.Event()
    real_load = server_mod.load_bundle

    def slow_load(*args, **kwargs):
        release.wait(20)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(server_mod, "load_bundle", slow_load)
    port = free_port()
    started = {}
    thread = threading.Thread(target=lambda: started.update(app=start_app(bundle_dir, f"127.0.0.1:{port}", CONFIG)))
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            health = health_pb2_grpc.HealthStub(channel)
            assert health_status(health) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.InferenceStub(channel).Score(rows_pb(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "no bundle loaded" in info.value.details()
            release.set()
            thread.join(30)
            deadline = time.monotonic() + 10
            while health_status(health) != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health_status(health) == health_pb2.HealthCheckResponse.SERVING
            assert pb_grpc.InferenceStub(channel).Score(rows_pb(), timeout=5).bundle_version == "toy-v1"
    finally:
        release.set()
        thread.join(30)
        if "app" in started:
            started["app"].stop(None)


def test_overload_and_internal_errors_keep_serving(bundle_dir, monkeypatch):
    """Beyond max_concurrent_rpcs → RESOURCE_EXHAUSTED (from gRPC); an unexpected
    exception → INTERNAL; the server keeps SERVING through both."""
    gate = threading.Event()
    entered = threading.Event()
    real_score = server_mod.wire.score

    def blocking_score(predictor, request):
        if request.rows and request.rows[0].fields["user"].token == "block":
            entered.set()
            gate.wait(20)
        if request.rows and request.rows[0].fields["user"].token == "crash":
            raise RuntimeError("bug")
        return real_score(predictor, request)

    monkeypatch.setattr(server_mod.wire, "score", blocking_score)
    config = ServerConfig(max_workers=2, max_concurrent_rpcs=1, limits=CONFIG.limits)
    app = start_app(bundle_dir, "127.0.0.1:0", config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            pending = stub.Score.future(rows_pb(i=0, user=pb.Value(token="block")), timeout=20)
            assert entered.wait(10)
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(rows_pb(), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            assert pending.result().bundle_version == "toy-v1"
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(rows_pb(i=0, user=pb.Value(token="crash")), timeout=5)
            assert info.value.code() == grpc.StatusCode.INTERNAL and "RuntimeError" in info.value.details()
            assert health_status(health_pb2_grpc.HealthStub(channel)) == health_pb2.HealthCheckResponse.SERVING
            assert len(stub.Score(rows_pb(), timeout=5).probabilities) == 3
    finally:
        gate.set()
        app.stop(None)
