"""Hundreds of malformed requests, every category of bad input, many variants each: each
gets the expected status code (and, for field errors, a message naming row and field);
afterwards the server is SERVING and a golden request scores exactly as before. The last
test adds the categories that need a busy server: expired deadlines and overload."""

from __future__ import annotations

import math
import time
from collections import Counter

import grpc
import pytest
from conftest import SHARED_MAX_ROWS
from grpc_health.v1 import health_pb2_grpc
from rpc_helpers import GOOD, SERVING, cols_pb, column_request, health_status, hold_predictor, row_request, rows_pb, wait_until
from serving_fixtures import make_spec, random_rows

from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.batcher import BatchConfig
from serving.encode import Limits
from serving.predictor import Predictor
from serving.config import ServerConfig

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_ROWS = SHARED_MAX_ROWS
MAX_BAG = 16
MAX_MESSAGE = 256 * 1024
SPEC = make_spec()
KINDS = {f.name: f.kind for f in SPEC.fields}
NUM_IDS = {f.name: f.num_embeddings for f in SPEC.fields}

# Every Value kind, and which field kinds accept it.
VALUES = {
    "token": pb.Value(token="x"),
    "id": pb.Value(id=1),
    "number": pb.Value(number=1.0),
    "tokens": pb.Value(tokens=pb.TokenList(values=["drama"])),
    "ids": pb.Value(ids=pb.IdList(values=[1])),
}
ACCEPTS = {"categorical": {"token", "id"}, "numerical": {"token", "number"}, "bag": {"tokens", "ids"}}


def ids_col(name, ids, lengths=()):
    return pb.Column(field=name, ids=pb.IdList(values=list(ids)), lengths=list(lengths))


def cases():
    """(category, name, request or raw bytes, expected code, words the message must contain)."""
    out = []

    def add(category, name, request, code=INVALID, words=()):
        out.append((category, name, request, code, tuple(words)))

    # unknown field
    for bad in ["colour", "USER", "user ", "", "city2", "ümlaut", "a" * 200, "genres.0"]:
        for i in range(3):
            add("unknown field", f"row {i} {bad!r}", rows_pb(i=i, **{bad: pb.Value(token="v")}), words=[f"row {i}", "unknown field"])
        add("unknown field", f"column {bad!r}", cols_pb(**{bad: ids_col(bad, [1, 1, 1])}), words=["unknown field"])
    # missing field
    for name in SPEC.names:
        for i in range(3):
            add("missing field", f"row {i} {name}", rows_pb(i=i, **{name: None}), words=[f"row {i}", f"missing field {name!r}"])
        add("missing field", f"column {name}", cols_pb(**{name: None}), words=[f"missing field {name!r}"])
    # a value or column with nothing set
    for name in SPEC.names:
        for i in (0, 2):
            add("unset value", f"row {i} {name}", rows_pb(i=i, **{name: pb.Value()}), words=[f"row {i}", repr(name), "none of"])
        add("unset value", f"column {name}", cols_pb(**{name: pb.Column(field=name)}), words=[repr(name), "none of"])
    # wrong type
    for name, kind in KINDS.items():
        for tag, v in VALUES.items():
            if tag in ACCEPTS[kind]:
                continue
            for i in (0, 1):
                add("wrong type", f"row {i} {name} {tag}", rows_pb(i=i, **{name: v}), words=[f"row {i}", repr(name), "wrong type"])
    for name, kind in KINDS.items():
        if kind in ("categorical", "bag"):
            col = pb.Column(field=name, numbers=pb.NumberList(values=[1.0, 2.0, 3.0]))
            add("wrong type", f"column {name} numbers", cols_pb(**{name: col}), words=[repr(name), "wrong type"])
        else:
            add("wrong type", f"column {name} ids", cols_pb(**{name: ids_col(name, [1, 2, 3])}), words=[repr(name), "wrong type"])
    # NaN / Inf
    for x in (math.nan, math.inf, -math.inf):
        for i in range(3):
            add("NaN/Inf", f"row {i} number {x}", rows_pb(i=i, age=pb.Value(number=x)), words=[f"row {i}", "'age'", "not finite"])
        for i in range(3):
            values = [1.0, 2.0, 3.0]
            values[i] = x
            col = pb.Column(field="age", numbers=pb.NumberList(values=values))
            add("NaN/Inf", f"column row {i} {x}", cols_pb(age=col), words=[f"row {i}", "'age'", "not finite"])
    for token in ("nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e400"):
        add("NaN/Inf", f"row token {token}", rows_pb(i=1, age=pb.Value(token=token)), words=["row 1", "'age'", "not finite"])
        col = pb.Column(field="age", tokens=pb.TokenList(values=["1", token, "2"]))
        add("NaN/Inf", f"column token {token}", cols_pb(age=col), words=["row 1", "'age'", "not finite"])
    # numerical tokens that are not numbers
    for token in ("old", "1,5", "abc", " ", "0x10", "--1"):
        add("bad number", f"row token {token!r}", rows_pb(i=2, age=pb.Value(token=token)), words=["row 2", "'age'", "not a number"])
    # out-of-range pre-encoded ids
    for name in ("user", "item", "city"):
        n = NUM_IDS[name]
        for bad in (n, n + 1, -1, -(2**63), 2**62):
            for i in (0, 2):
                add("id out of range", f"row {i} {name} {bad}", rows_pb(i=i, **{name: pb.Value(id=bad)}),
                    words=[f"row {i}", repr(name), f"out of range [0, {n})"])
            ids = [1, 1, 1]
            ids[1] = bad
            add("id out of range", f"column {name} {bad}", cols_pb(**{name: ids_col(name, ids)}), words=["row 1", repr(name), "out of range"])
    n = NUM_IDS["genres"]
    for bag in ([n], [1, n + 5], [-1], [2, 3, -7], [2**40]):
        add("id out of range", f"row bag {bag}", rows_pb(i=1, genres=pb.Value(ids=pb.IdList(values=bag))), words=["row 1", "'genres'", "out of range"])
        col = ids_col("genres", [1] + bag, [1, 0, len(bag)])
        add("id out of range", f"column bag {bag}", cols_pb(genres=col), words=["row 2", "'genres'", "out of range"])
    # bag lengths that do not match the values (columnar)
    for lengths, values, words in [
        ([1, 1, 1], [1, 2], ["sum to 3 but 2"]),
        ([1, 1, 1], [1, 2, 3, 4], ["sum to 3 but 4"]),
        ([0, 0, 0], [1], ["sum to 0 but 1"]),
        ([5, 0, 0], [1, 2], ["sum to 5 but 2"]),
        ([1], [1], ["1 bag lengths for 3 rows"]),
        ([1, 1], [1, 2], ["2 bag lengths for 3 rows"]),
        ([1, 1, 1, 1], [1, 2, 3, 4], ["4 bag lengths for 3 rows"]),
        ([], [1, 2, 3], ["0 bag lengths for 3 rows"]),
        ([2, -1, 0], [1], ["row 1", "negative"]),
        ([-5, 5, 3], [1, 1, 1], ["row 0", "negative"]),
        ([0, 0, -(2**31)], [], ["row 2", "negative"]),
        ([0, MAX_BAG + 1, 0], [1] * (MAX_BAG + 1), ["row 1", f"exceeds the limit {MAX_BAG}"]),
    ]:
        add("bag length mismatch", f"lengths {lengths[:4]} values {len(values)}", cols_pb(genres=ids_col("genres", values, lengths)),
            words=["'genres'", *words])
    for name in ("user", "item", "age", "city"):
        col = ids_col(name, [1, 1, 1], [1, 1, 1]) if name != "age" else pb.Column(field="age", numbers=pb.NumberList(values=[1, 2, 3]), lengths=[1, 1, 1])
        add("bag length mismatch", f"lengths on {name}", cols_pb(**{name: col}), words=[repr(name), "lengths are for bag"])
    for i in range(3):
        too_long = pb.Value(tokens=pb.TokenList(values=["drama"] * (MAX_BAG + 1)))
        add("bag length mismatch", f"row {i} bag too long", rows_pb(i=i, genres=too_long), words=[f"row {i}", "'genres'", "exceeds the limit"])
    # per-column value counts that do not match num_rows
    for name in ("user", "item", "age", "city"):
        for count in (1, 2, 4, 30):
            col = pb.Column(field="age", numbers=pb.NumberList(values=[1.0] * count)) if name == "age" else ids_col(name, [1] * count)
            add("row count mismatch", f"{name} {count} values", cols_pb(**{name: col}), words=[repr(name), f"{count} values for 3 rows"])
    # empty batch
    add("empty batch", "no rows no columns", pb.ScoreRequest(), words=["empty batch"])
    add("empty batch", "rows=[]", pb.ScoreRequest(rows=[]), words=["empty batch"])
    for num_rows in (0, -1, -100, -(2**31)):
        add("empty batch", f"num_rows {num_rows}", cols_pb(num_rows=num_rows), words=["empty batch"])
    add("empty batch", "columns without columns", pb.ScoreRequest(columns=pb.ColumnBatch(num_rows=0)), words=["empty batch"])
    # too many rows
    for n in (MAX_ROWS + 1, MAX_ROWS + 10, 2 * MAX_ROWS):
        add("too many rows", f"{n} rows", row_request([GOOD] * n), words=[f"{n} rows exceeds the limit of {MAX_ROWS}"])
    for n in (MAX_ROWS + 1, 10**6, 2**31 - 1):
        add("too many rows", f"num_rows {n}", cols_pb(num_rows=n), words=[f"{n} rows exceeds the limit"])
    # both forms, duplicate columns
    for n in (1, 3):
        add("rows and columns", f"{n} rows + columns", pb.ScoreRequest(rows=rows_pb(n=n).rows, columns=cols_pb().columns), words=["either rows or columns"])
    for name in SPEC.names:
        dup = cols_pb()
        dup.columns.columns.append([c for c in dup.columns.columns if c.field == name][0])
        add("duplicate column", name, dup, words=[repr(name), "more than once"])
    # bytes that are not a ScoreRequest at all
    for raw in (b"\xff", b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08", b"\x12\x80\x80\x80\x80\x10", bytes(range(256))):
        add("undecodable", f"bytes {raw[:6]!r}", raw, words=["not a valid"])
    # oversized message: refused by gRPC before any decoding
    for size in (MAX_MESSAGE + 1024, 2 * MAX_MESSAGE, 8 * MAX_MESSAGE):
        add("oversized message", f"{size} bytes token", rows_pb(i=0, user=pb.Value(token="x" * size)), code=EXHAUSTED)
    add("oversized message", "many ids", cols_pb(item=ids_col("item", [2**40] * (MAX_MESSAGE // 2))), code=EXHAUSTED)
    return out


CASES = cases()


def test_enough_cases_in_every_category():
    per = Counter(c[0] for c in CASES)
    assert len(CASES) >= 200, len(CASES)
    required = {"unknown field", "missing field", "wrong type", "NaN/Inf", "id out of range", "bag length mismatch",
                "empty batch", "too many rows", "oversized message"}
    assert required <= set(per), per
    assert all(per[c] >= 3 for c in required), per


def test_malformed_requests_get_the_right_status_and_change_nothing(shared_channel, spec):
    stub = pb_grpc.InferenceStub(shared_channel)
    raw_score = shared_channel.unary_unary("/embstack.v1.Inference/Score", request_serializer=None, response_deserializer=None)
    golden = row_request(random_rows(spec, 20, seed=5))
    before = stub.Score(golden, timeout=10)
    wrong = []
    for category, name, request, code, words in CASES:
        with pytest.raises(grpc.RpcError) as info:
            if isinstance(request, bytes):
                raw_score(request, timeout=10)
            else:
                stub.Score(request, timeout=10)
        err = info.value
        missing = [w for w in words if w not in (err.details() or "")]
        if err.code() != code or missing:
            wrong.append((category, name, err.code().name, err.details(), missing))
    assert wrong == []
    assert health_status(health_pb2_grpc.HealthStub(shared_channel)) == SERVING
    after = stub.Score(golden, timeout=10)
    assert list(after.probabilities) == list(before.probabilities)
    assert list(after.clusters) == list(before.clusters) and after.bundle_version == before.bundle_version


def test_overload_and_expired_deadlines_many_variants(bundle_dir, spec, start_server, monkeypatch):
    """The two categories a well-formed request can still fall into, several variants each,
    on a server whose only batch worker is held: a deadline that passes while queued →
    DEADLINE_EXCEEDED and the rows are never scored; a full batch queue, or more RPCs than
    max_concurrent_rpcs → RESOURCE_EXHAUSTED at once. Then the server serves on unchanged."""
    config = ServerConfig(max_workers=24, max_concurrent_rpcs=16, limits=Limits(max_rows=MAX_ROWS, max_bag=MAX_BAG),
                          batching=BatchConfig(max_rows=MAX_ROWS, max_queue_rows=40, workers=1))
    app = start_server(bundle_dir, config)
    golden = row_request(random_rows(spec, 20, seed=5))
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = pb_grpc.InferenceStub(channel)
    before = stub.Score(golden, timeout=10)
    held = hold_predictor(monkeypatch, 20)  # after the warm-up and the golden request
    gate, entered, scored = held.gate, held.entered, held.scored
    wrong = []

    def expect(category, future, code, words=()):
        try:
            future.result()
            wrong.append((category, "OK"))
        except grpc.RpcError as e:
            if e.code() != code or any(w not in e.details() for w in words):
                wrong.append((category, e.code().name, e.details()))

    def request(n, seed, columnar):
        rows = random_rows(spec, n, seed=seed)
        return column_request(spec, rows) if columnar else row_request(rows)

    try:
        blocker = stub.Score.future(request(1, 1, False), timeout=30)
        assert entered.wait(10)  # the only batch worker is busy
        # expired deadlines: 6 requests of 4 rows, queued (24 rows), then abandoned
        expiring = [stub.Score.future(request(4, 10 + k, k % 2 == 1), timeout=1.0 + 0.1 * k) for k in range(6)]
        wait_until(lambda: app.batcher.queued_rows == 24)
        assert app.batcher.queued_rows == 24, "the expiring requests did not reach the server within their deadline"
        for f in expiring:
            expect("expired deadline", f, grpc.StatusCode.DEADLINE_EXCEEDED)
        # full batch queue: 24 abandoned rows wait; more than 16 more exceed 40
        for k, n in enumerate((17, 20, 33, 50, MAX_ROWS)):
            start = time.monotonic()
            expect("overload: queue full", stub.Score.future(request(n, 20 + k, k % 2 == 0), timeout=10),
                   grpc.StatusCode.RESOURCE_EXHAUSTED, ["overloaded"])
            assert time.monotonic() - start < 2  # refused at once, not queued
        # max concurrent RPCs: the blocker + 15 one-row requests fill the 16 slots
        queued = [stub.Score.future(request(1, 30 + k, k % 2 == 0), timeout=30) for k in range(15)]
        wait_until(lambda: app.batcher.queued_rows == 24 + 15)
        assert app.batcher.queued_rows == 24 + 15
        for k in range(5):
            expect("overload: max concurrent RPCs", stub.Score.future(request(2, 50 + k, k % 2 == 0), timeout=10),
                   grpc.StatusCode.RESOURCE_EXHAUSTED, ["Concurrent RPC limit"])  # gRPC's refusal, not the queue's
    finally:
        gate.set()
    assert wrong == []
    assert len(blocker.result().probabilities) == 1
    assert all(len(f.result().probabilities) == 1 for f in queued)
    assert sorted(scored) == sorted([1] + [15])  # the blocker, then the 15 queued rows in one call; nothing expired
    assert health_status(health_pb2_grpc.HealthStub(channel)) == SERVING
    monkeypatch.setattr(Predictor, "predict", held.real)
    after = stub.Score(golden, timeout=10)
    assert list(after.probabilities) == list(before.probabilities) and list(after.clusters) == list(before.clusters)
    channel.close()
