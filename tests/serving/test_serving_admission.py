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
from serving.batcher import BatchConfig, DirectScorer, MicroBatcher
from serving.cost import ScoringCost
from serving.encode import Limits
from serving.errors import DeadlineExceeded, Overloaded
from serving.predictor import Prediction
from serving.config import ServerConfig

SCORE = "embstack.v1.Inference/Score"


class FakeQueue:
    """What Admission reads of a micro-batcher: room for 10 rows, 6 of them taken."""

    queued_rows = 6

    def check_room(self, rows: int) -> None:
        if self.queued_rows + rows > 10:
            raise Overloaded("server overloaded: queue full", reason="queue_full")


def cost_of(seconds_per_row: float) -> ScoringCost:
    cost = ScoringCost()
    cost.record(100, 100 * seconds_per_row)
    return cost


def test_admission_refuses_with_a_reason():
    admission = Admission(max_inflight=2, cost=cost_of(0.1), batcher=FakeQueue())
    now = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        with admission.admit(1, now - 0.01):
            pass
    assert info.value.reason == "deadline_expired"
    with pytest.raises(Overloaded) as info:
        with admission.admit(5, None):
            pass
    assert info.value.reason == "queue_full"
    with admission.admit(3, now + 0.2):  # an idle server takes it, whatever the cost
        with pytest.raises(DeadlineExceeded, match="shorter than the expected wait") as info:
            with admission.admit(1, now + 0.2):  # 3 rows × 0.1 s ahead
                pass
        assert info.value.reason == "deadline_unreachable"
        with admission.admit(1, now + 5):
            assert (admission.inflight, admission.inflight_rows) == (2, 4)
            with pytest.raises(Overloaded, match="in flight") as info:
                with admission.admit(1, None):
                    pass
            assert info.value.reason == "too_many_requests"
    assert (admission.inflight, admission.inflight_rows) == (0, 0)
    with admission.admit(4, None):  # room again once the others left
        assert admission.inflight == 1


def test_latency_budget_refuses_what_the_rows_ahead_would_keep_too_long():
    """Budget 1 s at 0.1 s per row over 2 workers: 16 rows ahead + 4 = 1.0 s is taken,
    one row more is refused; nothing is refused before any cost is known."""
    admission = Admission(max_inflight=100, cost=cost_of(0.1), workers=2, latency_budget_s=1.0)
    with admission.admit(16, None):
        assert admission.expected_wait(4) == pytest.approx(1.0)
        with pytest.raises(Overloaded, match="over the latency budget of 1000 ms") as info:
            with admission.admit(5, None):
                pass
        assert info.value.reason == "over_latency_budget"
        with admission.admit(4, None):
            pass
    with admission.admit(1000, None):  # idle: a large request alone is taken
        pass
    fresh = Admission(max_inflight=100, workers=1, latency_budget_s=0.001)
    with fresh.admit(1000, None), fresh.admit(1000, None):
        assert fresh.expected_wait() == 0.0


def test_admission_learns_the_time_its_model_of_scoring_misses(monkeypatch):
    """Requests that stay twice as long as predicted (decoding, gRPC threads: work the cost
    model does not see) teach a slowdown of 2, after which the same request is over the
    budget; the learnt factor is bounded, so a run of absurd timings cannot switch
    admission off."""
    clock = [0.0]
    monkeypatch.setattr("serving.admission.time.monotonic", lambda: clock[0])
    admission = Admission(max_inflight=100, cost=cost_of(0.01), workers=1)
    with admission.admit(5, None):  # idle: taken, predicts nothing, teaches nothing
        clock[0] += 1.0
        admission.latency_budget_s = 0.1
        with admission.admit(3, None):  # 80 ms predicted: within the budget while nothing is learnt
            clock[0] += 0.08
        admission.latency_budget_s = None
        for _ in range(200):
            with admission.admit(3, None):  # predicted 8 rows x 10 ms x slowdown; takes 80 ms x 2
                clock[0] += 0.16
        assert admission.slowdown == pytest.approx(2.0, rel=0.01)
        assert admission.expected_wait(3) == pytest.approx(0.16, rel=0.01)
        admission.latency_budget_s = 0.1
        with pytest.raises(Overloaded, match="over the latency budget"):
            with admission.admit(3, None):
                pass
        admission.latency_budget_s = None
        for _ in range(200):
            with admission.admit(1, None):
                clock[0] += 100.0
        assert admission.slowdown == 4.0


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


def test_scoring_cost_separates_the_fixed_part_of_a_call_from_its_rows():
    """Calls of 10 and 100 rows at 10 ms + 0.2 ms per row: the fit recovers both parts
    (exact data, float tolerance), so 5 one-row requests are charged 5 fixed parts, not
    5 × the average cost per row; calls of one size only give the ratio."""
    cost = ScoringCost()
    assert cost.seconds(3, 300) == 0.0  # nothing scored yet
    for rows in (10, 100, 40, 100, 10, 70):
        cost.record(rows, 0.010 + 0.0002 * rows)
    assert cost.fixed == pytest.approx(0.010, abs=1e-9) and cost.per_row == pytest.approx(0.0002, abs=1e-12)
    assert cost.seconds(5, 5) == pytest.approx(0.051)
    alike = ScoringCost()
    for _ in range(3):
        alike.record(100, 0.030)
    assert (alike.fixed, alike.per_row) == (0.0, pytest.approx(0.0003))


def test_batching_merges_what_admission_charges_per_call():
    """Batching on, calls of up to 100 rows: 150 rows ahead + 50 are 2 calls; batching
    off the same rows in 3 requests are 3 calls."""
    cost = ScoringCost()
    for rows in (10, 100):
        cost.record(rows, 0.010 + 0.0002 * rows)
    merged = Admission(max_inflight=10, cost=cost, call_rows=100)
    alone = Admission(max_inflight=10, cost=cost)
    with merged.admit(100, None), merged.admit(50, None):
        assert merged.expected_wait(50) == pytest.approx(2 * 0.010 + 200 * 0.0002)
    with alone.admit(100, None), alone.admit(50, None):
        assert alone.expected_wait(50) == pytest.approx(3 * 0.010 + 200 * 0.0002)


def test_a_call_in_progress_is_charged_only_what_it_still_needs():
    """A 100-row call at 0.1 s per row (10 s expected) in progress: the rows it holds are
    not charged again, its charge falls as it runs, and rows admitted behind it add their
    own cost (5 s for 50 rows)."""
    cost = cost_of(0.1)
    admission = Admission(max_inflight=10, cost=cost, call_rows=1000)
    release, started = threading.Event(), threading.Event()

    def score() -> None:
        with cost.call(100):
            started.set()
            release.wait(30)

    with admission.admit(100, None):
        worker = threading.Thread(target=score, daemon=True)
        worker.start()
        assert started.wait(5)
        assert cost.in_progress() == (1, 100)
        first = admission.expected_wait()
        time.sleep(0.3)
        later = admission.expected_wait()
        assert first <= 10.0 and first - later >= 0.3 - 1e-6  # the same clock runs in both
        with admission.admit(50, None):
            assert admission.expected_wait() == pytest.approx(later + 5.0, abs=0.5)  # 0.5: time between the reads
        release.set()
        worker.join(5)
    assert cost.in_progress() == (0, 0)


def test_batch_workers_record_what_scoring_costs():
    cost = ScoringCost()
    b = MicroBatcher(BatchConfig(max_rows=100, workers=1), cost=cost)
    try:
        assert cost.per_row == 0.0  # nothing scored yet: no estimate
        b.submit(SlowStub(0.05), rows_batch(10))
        assert 0.004 <= cost.per_row <= 0.05  # ~50 ms over 10 rows, plus scheduling
    finally:
        b.close()


def test_direct_scoring_runs_one_call_per_slot_and_records_its_cost():
    """Batching off: with one slot, a second request waits for the first (and its wait is
    not counted as scoring cost); a deadline passing in the wait leaves it unscored."""
    cost = ScoringCost()
    scorer = DirectScorer(workers=1, cost=cost)
    stub = SlowStub(0.0)
    stub.gate.clear()
    first = threading.Thread(target=scorer.submit, args=(stub, rows_batch(2)), daemon=True)
    first.start()
    assert stub.entered.wait(5)
    with pytest.raises(DeadlineExceeded, match="scoring slot") as info:
        scorer.submit(stub, rows_batch(1), deadline=time.monotonic() + 0.1)
    assert info.value.reason == "expired_in_queue"
    time.sleep(0.2)
    stub.gate.set()
    first.join(5)
    assert cost.per_row >= 0.1  # the first call held its slot ≥ 0.3 s for 2 rows
    start = time.monotonic()
    assert len(scorer.submit(stub, rows_batch(3)).probabilities) == 3
    assert time.monotonic() - start < 1.0


def teach_cost_then_block(stub, held, spec):
    """One slow call teaches the server its cost (~0.4 s for 4 rows, ~0.1 s a row); then a
    1-row request is held in the model call. Returns that request's future."""
    slow = stub.Score.future(row_request(random_rows(spec, 4, seed=1)), timeout=20)
    assert held.entered.wait(10)
    time.sleep(0.4)
    held.gate.set()
    assert len(slow.result().probabilities) == 4
    held.gate.clear()
    held.entered.clear()
    blocker = stub.Score.future(row_request(random_rows(spec, 1, seed=2)), timeout=30)
    assert held.entered.wait(10)
    return blocker


def test_a_flood_is_refused_early_with_reasons_and_counted(bundle_dir, spec, start_server, monkeypatch):
    """A tiny queue (10 rows, one worker held): of 12 concurrent 4-row requests two are
    queued and ten are refused RESOURCE_EXHAUSTED (queue_full); a request whose deadline
    is shorter than the queue's expected wait is refused DEADLINE_EXCEEDED at once; the
    scrape shows each refusal by code and reason; the queued requests are then served."""
    config = ServerConfig(max_workers=32, limits=Limits(max_rows=64, max_bag=16), metrics_port=0, latency_budget_ms=None,
                          batching=BatchConfig(max_rows=64, max_queue_rows=10, workers=1))
    app = start_server(bundle_dir, config)
    held = hold_predictor(monkeypatch, 10)  # after the warm-up
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            blocker = teach_cost_then_block(stub, held, spec)  # the only batch worker is busy
            flood = [stub.Score.future(row_request(random_rows(spec, 4, seed=10 + k)), timeout=30) for k in range(12)]
            assert wait_until(lambda: sum(f.done() for f in flood) == 10)  # the queued two wait for the worker
            refused = [f.exception() for f in flood if f.done()]
            assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rows already waiting" in e.details() for e in refused)
            assert app.batcher.queued_rows == 8
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:  # 9 rows × ~0.1 s ahead, 0.3 s to go
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


def test_batching_off_sheds_over_the_latency_budget_and_counts_it(bundle_dir, spec, start_server, monkeypatch):
    """Batching off, one scoring slot, budget 250 ms. Once a call taught the server ~0.1 s
    per row and one 1-row request holds the slot, a 1-row request (~0.2 s expected) is
    taken and a 4-row one (~0.5 s) is refused at once, counted by its reason; both
    admitted requests are then answered."""
    config = ServerConfig(max_workers=16, limits=Limits(max_rows=64, max_bag=16), metrics_port=0, latency_budget_ms=250,
                          batching=BatchConfig(enabled=False, workers=1))
    app = start_server(bundle_dir, config)
    held = hold_predictor(monkeypatch, 10)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            blocker = teach_cost_then_block(stub, held, spec)
            waiting = stub.Score.future(row_request(random_rows(spec, 1, seed=3)), timeout=30)
            assert wait_until(lambda: app_inflight(app) == 2)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(row_request(random_rows(spec, 4, seed=4)), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over the latency budget of 250 ms" in info.value.details()
            assert time.monotonic() - start < 0.25  # refused at once
        finally:
            held.gate.set()
        assert len(blocker.result().probabilities) == 1 and len(waiting.result().probabilities) == 1
    samples, _ = scrape(app.metrics_port)
    assert value(samples, "embstack_refusals_total", method=SCORE, code="RESOURCE_EXHAUSTED", reason="over_latency_budget") == 1
    assert value(samples, "embstack_requests_total", method=SCORE, code="OK") == 3


def app_inflight(app) -> float:
    samples, _ = scrape(app.metrics_port)
    return value(samples, "embstack_inflight_requests")
