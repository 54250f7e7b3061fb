"""Admission control: the server refuses, early and with a reason, work it cannot take or
cannot finish in time, and counts every such refusal by code and reason."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from rpc_helpers import hold_predictor, row_request, wait_until
from serving_fixtures import random_rows
from test_serving_metrics import scrape, value

from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.admission import Admission
from serving.batch import FeatureBatch
from serving.batcher import BatchConfig, MicroBatcher
from serving.encode import Limits
from serving.errors import DeadlineExceeded, Overloaded
from serving.predictor import Prediction
from serving.server import ServerConfig

SCORE = "embstack.v1.Inference/Score"


class FakeQueue:
    """What Admission reads of a micro-batcher: room for 10 rows, a fixed expected wait."""

    queued_rows = 6

    def __init__(self, wait: float):
        self.wait = wait

    def check_room(self, rows: int) -> None:
        if self.queued_rows + rows > 10:
            raise Overloaded("server overloaded: queue full", reason="queue_full")

    def expected_wait(self) -> float:
        return self.wait


def test_admission_refuses_with_a_reason():
    admission = Admission(max_inflight=2, batcher=FakeQueue(wait=0.5))
    now = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        with admission.admit(1, now - 0.01):
            pass
    assert info.value.reason == "deadline_expired"
    with pytest.raises(Overloaded) as info:
        with admission.admit(5, None):
            pass
    assert info.value.reason == "queue_full"
    with pytest.raises(DeadlineExceeded, match="shorter than the expected wait") as info:
        with admission.admit(1, now + 0.2):
            pass
    assert info.value.reason == "deadline_unreachable"
    with admission.admit(1, now + 5), admission.admit(1, None):
        assert admission.inflight == 2
        with pytest.raises(Overloaded, match="in flight") as info:
            with admission.admit(1, None):
                pass
        assert info.value.reason == "too_many_requests"
    assert admission.inflight == 0
    with admission.admit(4, None):  # room again once the others left
        assert admission.inflight == 1


class SlowStub:
    """Takes `seconds` per model call, however many rows; blocks while `gate` is clear."""

    version = "stub"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def predict(self, batch: FeatureBatch) -> Prediction:
        self.entered.set()
        time.sleep(self.seconds)
        self.gate.wait(10)
        n = batch.num_rows
        return Prediction(np.zeros(n, np.float32), np.zeros(n, np.int64), self.version)


def rows_batch(n: int) -> FeatureBatch:
    return FeatureBatch(np.zeros((n, 1), np.float32), (), ())


def test_expected_wait_follows_the_queue_and_the_recent_cost():
    stub = SlowStub(0.05)
    b = MicroBatcher(BatchConfig(max_rows=100, workers=1))
    try:
        assert b.expected_wait() == 0.0  # nothing scored yet: no estimate, no refusals
        b.submit(stub, rows_batch(10))  # ~5 ms per row
        stub.gate.clear()
        stub.entered.clear()
        threading.Thread(target=b.submit, args=(stub, rows_batch(1)), daemon=True).start()
        assert stub.entered.wait(5)
        threading.Thread(target=b.submit, args=(stub, rows_batch(20)), daemon=True).start()
        deadline = time.monotonic() + 5
        while b.queued_rows != 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert 0.08 <= b.expected_wait() <= 0.5  # 20 rows × ~5 ms, one worker
    finally:
        stub.gate.set()
        b.close()


def test_a_flood_is_refused_early_with_reasons_and_counted(bundle_dir, spec, start_server, monkeypatch):
    """A tiny queue (10 rows, one worker held): of 12 concurrent 4-row requests two are
    queued and ten are refused RESOURCE_EXHAUSTED (queue_full); a request whose deadline
    is shorter than the queue's expected wait is refused DEADLINE_EXCEEDED at once; the
    scrape shows each refusal by code and reason; the queued requests are then served."""
    config = ServerConfig(max_workers=32, limits=Limits(max_rows=64, max_bag=16), metrics_port=0,
                          batching=BatchConfig(max_rows=64, max_queue_rows=10, workers=1))
    app = start_server(bundle_dir, config)
    held = hold_predictor(monkeypatch, 10)  # after the warm-up
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            # one slow call teaches the server its cost: ~0.4 s for 4 rows
            slow = stub.Score.future(row_request(random_rows(spec, 4, seed=1)), timeout=20)
            assert held.entered.wait(10)
            time.sleep(0.4)
            held.gate.set()
            assert len(slow.result().probabilities) == 4
            held.gate.clear()
            held.entered.clear()
            blocker = stub.Score.future(row_request(random_rows(spec, 1, seed=2)), timeout=30)
            assert held.entered.wait(10)  # the only batch worker is busy
            flood = [stub.Score.future(row_request(random_rows(spec, 4, seed=10 + k)), timeout=30) for k in range(12)]
            assert wait_until(lambda: sum(f.done() for f in flood) == 10)  # the queued two wait for the worker
            refused = [f.exception() for f in flood if f.done()]
            assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rows already waiting" in e.details() for e in refused)
            assert app.batcher.queued_rows == 8
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:  # 8 rows × ~0.1 s ahead, 0.3 s to go
                stub.Score(row_request(random_rows(spec, 1, seed=3)), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "shorter than the expected wait" in info.value.details()
            assert time.monotonic() - start < 0.25  # refused at once, not after waiting out the deadline
        finally:
            held.gate.set()
        assert len(blocker.result().probabilities) == 1
        assert sum(1 for f in flood if f.exception() is None and len(f.result().probabilities) == 4) == 2
    samples, _ = scrape(app.metrics_port)
    assert value(samples, "embstack_refusals_total", method=SCORE, code="RESOURCE_EXHAUSTED", reason="queue_full") == 10
    assert value(samples, "embstack_refusals_total", method=SCORE, code="DEADLINE_EXCEEDED", reason="deadline_unreachable") == 1
    assert value(samples, "embstack_requests_total", method=SCORE, code="RESOURCE_EXHAUSTED") == 10
    assert value(samples, "embstack_requests_total", method=SCORE, code="OK") == 4
    assert value(samples, "embstack_inflight_requests") == 0
