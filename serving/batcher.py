"""Micro-batching: concurrent Score requests merged into one model call per cluster.

Every call of an exported program costs a fixed ~1–2 ms of Python dispatch whatever the
batch size, so 10 requests of 100 rows scored together cost far less than 10 separate
calls. Handler threads decode and validate their own request, then `submit` the encoded
rows and wait; batch workers take what is queued (up to `max_rows`, holding a batch open
at most `max_wait_ms` for more), score it with the predictor that encoded it, and hand
each request its slice.

    batcher = MicroBatcher(BatchConfig(max_rows=1024, max_wait_ms=1))
    prediction = batcher.submit(predictor, feature_batch, deadline=time.monotonic() + 0.05)
    batcher.close()

Deadlines: a request whose deadline passes while it waits is dropped before any model
work (its handler gets DeadlineExceeded). Overload: more than `max_queue_rows` rows
waiting → Overloaded (RESOURCE_EXHAUSTED) at once, rather than an unbounded queue.
Each model call's cost is recorded in a `ScoringCost` that admission reads to turn the
rows in flight into seconds. With batching off, `DirectScorer` scores each request on
its handler thread, at most one per worker at once, and records the same cost.
A hot reload may swap predictors while requests wait: a merged batch only ever holds
requests encoded by one predictor, so each is scored by the bundle that validated it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass

from serving.batch import FeatureBatch
from serving.cost import ScoringCost
from serving.errors import DeadlineExceeded, NotReady, Overloaded
from serving.metrics import ServerMetrics
from serving.predictor import Prediction, Predictor


def available_cores() -> int:
    """Cores this process may run on (honours taskset / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class BatchConfig:
    """How concurrent requests are merged.

    Args:
        enabled: merge concurrent requests; False scores each request on its own handler
            thread (one model call per cluster per request).
        max_rows: rows per merged batch; a single larger request is scored alone.
        max_wait_ms: how long a free worker holds a batch smaller than `max_rows` open for
            more requests. 0 takes whatever is queued at once: no added latency at low
            load, and batches still form while the workers are busy.
        max_queue_rows: rows allowed to wait for a worker; beyond → RESOURCE_EXHAUSTED.
        workers: batch worker threads; None = one per available core.
    """

    enabled: bool = True
    max_rows: int = 1024
    max_wait_ms: float = 0.0
    max_queue_rows: int = 16384
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_queue_rows < 1 or self.max_wait_ms < 0:
            raise ValueError(f"invalid batching config {self}")
        if self.workers is None:
            self.workers = available_cores()


class _Pending:
    """One submitted request, waiting for its slice of a merged batch."""

    __slots__ = ("predictor", "batch", "deadline", "enqueued", "done", "result", "error", "abandoned")

    def __init__(self, predictor: Predictor, batch: FeatureBatch, deadline: float | None):
        self.predictor, self.batch, self.deadline = predictor, batch, deadline
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result: Prediction | None = None
        self.error: BaseException | None = None
        self.abandoned = False

    def finish(self, result: Prediction | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class MicroBatcher:
    """A queue of encoded requests and the worker threads that score them in batches.

    Args:
        config: batching settings (`enabled` is ignored: construct one only when on).
        metrics: where batch sizes and queue waits are recorded (optional).
        cost: where each batch's scoring time is recorded (optional).
    """

    def __init__(self, config: BatchConfig, metrics: ServerMetrics | None = None, cost: ScoringCost | None = None):
        self.config = config
        self.metrics = metrics
        self.cost = cost or ScoringCost()
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"embstack-batch-{i}", daemon=True) for i in range(int(config.workers or 1))
        ]
        for t in self._threads:
            t.start()
        if metrics is not None:
            metrics.watch_queue(lambda: self._rows)

    @property
    def queued_rows(self) -> int:
        return self._rows

    def submit(self, predictor: Predictor, batch: FeatureBatch, deadline: float | None = None) -> Prediction:
        """Queues `batch` (encoded by `predictor`) and waits for its scores.

        Args:
            predictor: the predictor whose encoder built `batch`; it scores the rows.
            batch: validated rows.
            deadline: `time.monotonic()` after which the caller no longer wants an answer.

        Raises Overloaded (queue full), DeadlineExceeded (deadline passed before the rows
        were scored; they were not worked on), NotReady (batcher closed), or whatever
        scoring raised.
        """
        item = _Pending(predictor, batch, deadline)
        n = batch.num_rows
        with self._cond:
            if self._closed:
                raise NotReady("server is shutting down", reason="draining")
            self.check_room(n)
            self._queue.append(item)
            self._rows += n
            self._cond.notify()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not item.done.wait(timeout):
            item.abandoned = True  # a worker that reaches it drops it unscored
            if not item.done.is_set():
                raise DeadlineExceeded(
                    "deadline expired while waiting for a batch worker; the rows were not scored", reason="expired_in_queue"
                )
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def check_room(self, rows: int) -> None:
        """Raises Overloaded when `rows` more would overfill the queue. A request alone
        larger than the whole queue is still taken when nothing waits, else it could
        never be served."""
        if self._rows and self._rows + rows > self.config.max_queue_rows:
            raise Overloaded(
                f"server overloaded: {self._rows} rows already waiting (limit {self.config.max_queue_rows}); retry with backoff",
                reason="queue_full",
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stops the workers after the queue empties; later submits get NotReady."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------ workers
    def _take(self) -> list[_Pending] | None:
        """Blocks for work; returns the next batch of requests (one predictor), or None
        when closed and drained."""
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if cfg.max_wait_ms > 0:
                hold_until = self._queue[0].enqueued + cfg.max_wait_ms / 1e3
                while self._queue and self._rows < cfg.max_rows and not self._closed:
                    remaining = hold_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._queue:  # another worker took them meanwhile
                    return []
            first = self._queue.popleft()
            items, rows = [first], first.batch.num_rows
            while self._queue:
                nxt = self._queue[0]
                if nxt.predictor is not first.predictor or rows + nxt.batch.num_rows > cfg.max_rows:
                    break
                items.append(self._queue.popleft())
                rows += nxt.batch.num_rows
            self._rows -= rows
            return items

    def _work(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            if items:
                self._score(items)

    def _score(self, items: list[_Pending]) -> None:
        now = time.monotonic()
        live = []
        for it in items:
            if it.abandoned or (it.deadline is not None and it.deadline <= now):
                it.finish(error=DeadlineExceeded("deadline expired while queued; the rows were not scored", reason="expired_in_queue"))
            else:
                live.append(it)
        if not live:
            return
        predictor = live[0].predictor
        try:
            merged = FeatureBatch.concat([it.batch for it in live])
            with self.cost.call(merged.num_rows):
                pred = predictor.predict(merged)
        except BaseException as e:  # hand the error to every waiting handler; the worker lives on
            for it in live:
                it.finish(error=e)
            return
        if self.metrics is not None:
            self.metrics.batch_rows.observe(merged.num_rows)
            self.metrics.batch_requests.observe(len(live))
            for it in live:
                self.metrics.queue_wait.observe(now - it.enqueued)
        start = 0
        for it in live:
            stop = start + it.batch.num_rows
            it.finish(Prediction(pred.probabilities[start:stop], pred.clusters[start:stop], pred.version))
            start = stop


class DirectScorer:
    """Batching off: each request scored alone (one model call per cluster) on its own
    handler thread, at most `workers` at once.

    The slots keep model calls from time-slicing each other on the cores (each would take
    `workers`× longer, and its recorded cost with it), so the requests waiting for a slot
    are what admission weighs. Takes `MicroBatcher.submit`'s arguments.

    Args:
        workers: model calls at once (one per core).
        metrics: where request sizes and slot waits are recorded (optional).
        cost: where each call's scoring time is recorded (optional).
    """

    def __init__(self, workers: int, metrics: ServerMetrics | None = None, cost: ScoringCost | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.metrics = workers, metrics
        self.cost = cost or ScoringCost()
        self._slots = threading.BoundedSemaphore(workers)

    def submit(self, predictor: Predictor, batch: FeatureBatch, deadline: float | None = None) -> Prediction:
        """Scores `batch` once a slot is free. Raises DeadlineExceeded, unscored, when the
        deadline passes first."""
        enqueued = time.monotonic()
        timeout = None if deadline is None else deadline - enqueued
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("deadline expired before scoring; the rows were not scored", reason="expired_in_queue")
        if not self._slots.acquire(timeout=timeout):
            raise DeadlineExceeded("deadline expired while waiting for a scoring slot; the rows were not scored",
                                   reason="expired_in_queue")
        try:
            start = time.monotonic()
            with self.cost.call(batch.num_rows):
                pred = predictor.predict(batch)
        finally:
            self._slots.release()
        if self.metrics is not None:
            self.metrics.batch_rows.observe(batch.num_rows)
            self.metrics.batch_requests.observe(1)
            self.metrics.queue_wait.observe(start - enqueued)
        return pred
