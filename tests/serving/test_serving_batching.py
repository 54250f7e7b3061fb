"""Micro-batching: merged requests score like the offline predictor; deadlines and
overload are honoured; batches never mix bundles; thread counts follow the cores."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from rpc_helpers import column_request, hold_predictor, row_request
from serving_fixtures import random_rows

import serving.batcher as batcher_mod
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.batch import FeatureBatch
from serving.batcher import BatchConfig, MicroBatcher
from serving.encode import Limits
from serving.errors import DeadlineExceeded, Overloaded
from serving.predictor import Prediction, Predictor
from serving.config import ServerConfig

LIMITS = Limits(max_rows=64, max_bag=16)


class StubPredictor:
    """Scores row r as r / 1000 (dense column 0 carries r); records every call; can block."""

    def __init__(self, version: str = "stub"):
        self.version = version
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def predict(self, batch: FeatureBatch) -> Prediction:
        self.entered.set()
        self.gate.wait(10)
        rows = batch.dense[:, 0].astype(int).tolist()
        self.calls.append(rows)
        return Prediction(np.asarray(rows, np.float32) / 1000, np.zeros(len(rows), np.int64), self.version)


def rows_batch(*rows: int) -> FeatureBatch:
    return FeatureBatch(np.asarray(rows, np.float32)[:, None], (), ())


def test_merges_requests_and_splits_results_in_order():
    stub = StubPredictor()
    stub.gate.clear()
    b = MicroBatcher(BatchConfig(max_rows=100, workers=1))
    try:
        results = {}
        blocker = threading.Thread(target=lambda: results.update(first=b.submit(stub, rows_batch(0))))
        blocker.start()
        assert stub.entered.wait(5)
        threads = [threading.Thread(target=lambda k=k: results.update({k: b.submit(stub, rows_batch(k * 10, k * 10 + 1))})) for k in range(1, 6)]
        for t in threads:
            t.start()
        assert wait_for(lambda: b.queued_rows == 10)
        stub.gate.set()
        for t in [blocker, *threads]:
            t.join(5)
        assert stub.calls[0] == [0] and len(stub.calls) == 2  # the five waiting requests went in one call
        assert sorted(stub.calls[1]) == sorted(r for k in range(1, 6) for r in (k * 10, k * 10 + 1))
        for k in range(1, 6):
            assert results[k].probabilities.tolist() == pytest.approx([k * 10 / 1000, (k * 10 + 1) / 1000])
    finally:
        stub.gate.set()
        b.close()


def test_max_rows_caps_a_merged_batch():
    stub = StubPredictor()
    stub.gate.clear()
    b = MicroBatcher(BatchConfig(max_rows=4, workers=1))
    try:
        threads = [threading.Thread(target=b.submit, args=(stub, rows_batch(k, k))) for k in range(5)]
        threads[0].start()
        assert stub.entered.wait(5)
        for t in threads[1:]:
            t.start()
        assert wait_for(lambda: b.queued_rows == 8)
        stub.gate.set()
        for t in threads:
            t.join(5)
        assert [len(c) for c in stub.calls] == [2, 4, 4]
    finally:
        stub.gate.set()
        b.close()


def test_expired_requests_are_not_worked_on_and_overload_is_refused():
    stub = StubPredictor()
    stub.gate.clear()
    b = MicroBatcher(BatchConfig(max_rows=100, max_queue_rows=5, workers=1))
    try:
        threading.Thread(target=b.submit, args=(stub, rows_batch(1)), daemon=True).start()
        assert stub.entered.wait(5)  # the worker is busy with row 1
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            b.submit(stub, rows_batch(2, 2, 2), deadline=time.monotonic() + 0.1)
        assert 0.09 <= time.monotonic() - start < 2
        with pytest.raises(Overloaded, match="rows already waiting"):  # 3 abandoned rows still queued + 3 > 5
            b.submit(stub, rows_batch(3, 3, 3))
        late = threading.Thread(target=b.submit, args=(stub, rows_batch(4)), daemon=True)
        late.start()
        stub.gate.set()
        late.join(5)
        assert [2, 2, 2] not in stub.calls and [3, 3, 3] not in stub.calls
        assert sorted(r for c in stub.calls for r in c) == [1, 4]
    finally:
        stub.gate.set()
        b.close()


def test_a_batch_holds_requests_of_one_predictor_only():
    old, new = StubPredictor("old"), StubPredictor("new")
    old.gate.clear()
    b = MicroBatcher(BatchConfig(max_rows=100, workers=1))
    try:
        out = []
        first = threading.Thread(target=lambda: out.append(b.submit(old, rows_batch(0))), daemon=True)
        first.start()
        assert old.entered.wait(5)
        submits = [(old, 1), (old, 2), (new, 3), (new, 4), (old, 5)]
        threads = [threading.Thread(target=lambda p=p, r=r: out.append(b.submit(p, rows_batch(r))), daemon=True) for p, r in submits]
        for k, t in enumerate(threads, start=1):
            t.start()
            assert wait_for(lambda k=k: b.queued_rows == k)  # one row each, queued in submission order
        old.gate.set()
        for t in [first, *threads]:  # every submitter has its answer before the count
            t.join(5)
        assert old.calls == [[0], [1, 2], [5]] and new.calls == [[3, 4]]
        assert sorted(p.version for p in out) == ["new", "new", "old", "old", "old", "old"]
    finally:
        old.gate.set()
        b.close()


def test_thread_counts_follow_the_cores(monkeypatch):
    monkeypatch.setattr(batcher_mod, "available_cores", lambda: 1)
    assert BatchConfig().workers == 1 and BatchConfig(enabled=False).workers == 1  # scoring slots with batching off
    assert ServerConfig().handler_threads() == 64 + 16  # max_inflight + spare
    assert ServerConfig(batching=BatchConfig(enabled=False)).handler_threads() == 64 + 16  # they wait for a slot
    monkeypatch.setattr(batcher_mod, "available_cores", lambda: 8)
    assert BatchConfig().workers == 8
    assert ServerConfig(max_inflight=8).handler_threads() == 8 + 16
    assert ServerConfig(max_inflight=8).concurrency_cap() == 32 and ServerConfig(max_concurrent_rpcs=5).concurrency_cap() == 5
    assert ServerConfig(max_workers=3).handler_threads() == 3


@pytest.mark.parametrize("batching", [True, False], ids=["batching-on", "batching-off"])
def test_concurrent_requests_score_like_the_offline_predictor(batching, bundle_dir, bundle, spec, start_server):
    config = ServerConfig(max_workers=8, limits=LIMITS, metrics_port=0, batching=BatchConfig(enabled=batching, max_wait_ms=20))
    app = start_server(bundle_dir, config)
    offline = Predictor(bundle, LIMITS)
    requests = [random_rows(spec, n, seed=100 + n) for n in (1, 3, 7, 12, 20, 33, 50, 64)]
    got, errors = {}, []
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)

        def send(k: int) -> None:
            try:
                rows = requests[k]
                req = row_request(rows) if k % 2 else column_request(spec, rows)
                got[k] = stub.Score(req, timeout=20)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    for k, rows in enumerate(requests):
        want = offline.predict_rows(rows)
        assert list(got[k].clusters) == want.clusters.tolist()
        assert float(np.max(np.abs(np.asarray(got[k].probabilities) - want.probabilities))) < 1e-6
    calls = app.metrics.value("embstack_batch_requests_count")
    if batching:
        assert calls < len(requests)  # some requests shared a model call
    else:
        assert calls == len(requests)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_grpc_deadlines_and_overload(bundle_dir, spec, start_server, monkeypatch):
    """Over gRPC: a request whose deadline passes in the queue → DEADLINE_EXCEEDED and is
    never scored; a full queue → RESOURCE_EXHAUSTED at once; the server then serves on."""
    config = ServerConfig(max_workers=8, limits=LIMITS, metrics_port=0, batching=BatchConfig(max_rows=64, max_queue_rows=10, workers=1))
    app = start_server(bundle_dir, config)
    held = hold_predictor(monkeypatch, 10)  # after the warm-up
    gate, entered, scored = held.gate, held.entered, held.scored
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        blocker = stub.Score.future(row_request(random_rows(spec, 1, seed=1)), timeout=20)
        assert entered.wait(10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(row_request(random_rows(spec, 8, seed=2)), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(row_request(random_rows(spec, 5, seed=3)), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in info.value.details()
        assert time.monotonic() - start < 2  # refused at once, not after queueing
        gate.set()
        assert len(blocker.result().probabilities) == 1
        assert len(stub.Score(row_request(random_rows(spec, 4, seed=4)), timeout=10).probabilities) == 4
    assert scored == [1, 4]  # the expired 8 rows were never scored
    assert wait_for(lambda: app.metrics.value("embstack_requests_total", method="embstack.v1.Inference/Score", code="DEADLINE_EXCEEDED") == 1)
    assert app.metrics.value("embstack_requests_total", method="embstack.v1.Inference/Score", code="RESOURCE_EXHAUSTED") == 1


def test_grpc_deadlines_with_batching_off(bundle_dir, spec, start_server, monkeypatch):
    """Batching off, one handler thread: requests whose deadline passes while they wait for
    the thread → DEADLINE_EXCEEDED, and they are never scored once the thread frees up."""
    config = ServerConfig(max_workers=1, limits=LIMITS, batching=BatchConfig(enabled=False))
    app = start_server(bundle_dir, config)
    held = hold_predictor(monkeypatch, 10)  # after the warm-up
    gate, entered, scored = held.gate, held.entered, held.scored
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            blocker = stub.Score.future(row_request(random_rows(spec, 1, seed=1)), timeout=20)
            assert entered.wait(10)
            late = [stub.Score.future(column_request(spec, random_rows(spec, n, seed=n)), timeout=0.1 * n) for n in (2, 3, 5)]
            for f in late:
                with pytest.raises(grpc.RpcError) as info:
                    f.result()
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            gate.set()
        assert len(blocker.result().probabilities) == 1
        assert len(stub.Score(row_request(random_rows(spec, 4, seed=4)), timeout=10).probabilities) == 4
    assert scored == [1, 4]  # the expired 2, 3 and 5 rows were never scored
