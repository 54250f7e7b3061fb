"""Admission control: the server's own early refusals, before a Score request is decoded.

RPCs that gRPC refuses for `maximum_concurrent_rpcs` never reach a handler, so they reach
no metric and the caller learns no reason. The server therefore sheds load itself, at
the door and before any decoding, and every refusal is counted by code and reason
(embstack_refusals_total); gRPC's cap sits well above what admission lets in and is a
last resort only.

    admission = Admission(max_inflight=128, batcher=batcher, metrics=metrics)
    with admission.admit(rows=100, deadline=time.monotonic() + 0.05):
        ...decode and score...

Checks, cheapest first:
  deadline_expired      DEADLINE_EXCEEDED   the deadline passed before the handler ran
  queue_full            RESOURCE_EXHAUSTED  the batch queue has no room for these rows
  deadline_unreachable  DEADLINE_EXCEEDED   the expected wait outlasts the deadline
  over_latency_budget   RESOURCE_EXHAUSTED  the rows already admitted would keep this one
                                            longer than the server's latency budget
  too_many_requests     RESOURCE_EXHAUSTED  `max_inflight` Score requests already admitted
The expected wait is what the requests admitted and not yet answered (decoding, queued or
being scored) cost to score, from the recent cost of a call and of a row (`serving.cost`),
spread over the scoring workers: the calls in progress count for what they still need,
the rest for their rows, merged into calls of up to `call_rows` rows with batching on.
That model sees only the scoring calls; the rest of a request's time in the server
(decoding, handing rows to the batcher, gRPC's own threads on the same cores) is learnt
from the requests themselves: each answered request that waited behind others compares its
time in the server with the wait predicted when it was admitted, and the running ratio
(`slowdown`) scales every later prediction. So under overload the server answers what it
takes within the budget and refuses the rest at once, instead of letting every answer grow
late together. A request arriving at an idle server is always taken, however large: the
request limits bound size, the budget bounds waiting. `queue_full` needs the
micro-batcher's queue (batching on); the batcher repeats that check when the rows are
queued, since other requests may have filled the queue while this one decoded.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from serving.batcher import MicroBatcher
from serving.cost import ScoringCost
from serving.errors import DeadlineExceeded, Overloaded
from serving.metrics import ServerMetrics

# A prediction this short (a request that found the server nearly idle) says too little about
# the unmodelled part of a request's time to learn from.
_LEARN_FROM_S = 0.002
_LEARN_RATE = 0.05
_SLOWDOWN_RANGE = (0.5, 4.0)  # a burst of odd requests must not switch admission off or shut it


class Admission:
    """Admits or refuses Score requests and counts those in flight.

    Args:
        max_inflight: Score requests admitted at once; more → RESOURCE_EXHAUSTED.
        cost: the recent scoring cost per row, recorded by whoever scores.
        workers: model calls that run at once (batch workers, or scoring slots with
            batching off): the rows in flight drain this many at a time.
        call_rows: rows merged into one model call (batching on); None: each request
            is its own call (batching off).
        latency_budget_s: longest expected time in the server (wait + own scoring) a
            request is admitted for; None admits regardless.
        batcher: the micro-batcher whose queue room bounds admission (None with batching off).
        metrics: where the in-flight gauge lives (optional).
    """

    def __init__(
        self,
        max_inflight: int,
        cost: ScoringCost | None = None,
        workers: int = 1,
        call_rows: int | None = None,
        latency_budget_s: float | None = None,
        batcher: MicroBatcher | None = None,
        metrics: ServerMetrics | None = None,
    ):
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if latency_budget_s is not None and not latency_budget_s > 0:
            raise ValueError(f"latency budget must be > 0 seconds, got {latency_budget_s}")
        self.max_inflight, self.workers, self.call_rows = max_inflight, workers, call_rows
        self.latency_budget_s = latency_budget_s
        self.cost = cost or ScoringCost()
        self.batcher, self.metrics = batcher, metrics
        self._inflight = 0
        self._inflight_rows = 0
        self._slowdown = 1.0
        self._lock = threading.Lock()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def inflight_rows(self) -> int:
        return self._inflight_rows

    @property
    def slowdown(self) -> float:
        """Learnt ratio of a request's time in the server to the wait its admission predicted."""
        return self._slowdown

    def expected_wait(self, rows: int = 0) -> float:
        """Seconds until the requests in flight, plus one of `rows` rows, would be scored:
        what the calls in progress still need, then the rows not yet in a call; 0 before
        anything was scored (no estimate, no refusals). Scaled by `slowdown`."""
        busy_calls, busy_rows = self.cost.in_progress()
        waiting_rows = max(0, self._inflight_rows - busy_rows) + rows
        if self.call_rows is None:
            calls = max(0, self._inflight - busy_calls) + (1 if rows else 0)
        else:
            calls = -(-waiting_rows // self.call_rows)
        return self._slowdown * (self.cost.remaining() + self.cost.seconds(calls, waiting_rows)) / self.workers

    @contextmanager
    def admit(self, rows: int, deadline: float | None) -> Iterator[None]:
        """Raises DeadlineExceeded or Overloaded (with a reason) unless the request can be
        taken; otherwise counts it (and its rows) in flight until the block ends.

        Args:
            rows: rows the request says it carries (not yet validated).
            deadline: the caller's deadline on `time.monotonic()`; None without one.
        """
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("deadline expired before the request was read; not scored", reason="deadline_expired")
        if self.batcher is not None:
            self.batcher.check_room(rows)
        with self._lock:
            predicted = self._check_wait(rows, None if deadline is None else deadline - now)
            if self._inflight >= self.max_inflight:
                raise Overloaded(
                    f"server overloaded: {self._inflight} requests in flight (limit {self.max_inflight}); retry with backoff",
                    reason="too_many_requests",
                )
            self._inflight += 1
            self._inflight_rows += rows
        if self.metrics is not None:
            self.metrics.inflight.inc()
        try:
            yield
            self._learn(predicted, time.monotonic() - now)  # answered: a refused or failed request teaches nothing
        finally:
            with self._lock:
                self._inflight -= 1
                self._inflight_rows -= rows
            if self.metrics is not None:
                self.metrics.inflight.dec()

    def _learn(self, predicted: float | None, took: float) -> None:
        if predicted is None or predicted < _LEARN_FROM_S:
            return
        # A geometric running mean of took / predicted: the predictions already carry the
        # slowdown, so a ratio of 1 leaves it where it is.
        with self._lock:
            moved = self._slowdown * (took / predicted) ** _LEARN_RATE
            self._slowdown = min(max(moved, _SLOWDOWN_RANGE[0]), _SLOWDOWN_RANGE[1])
        if self.metrics is not None:
            self.metrics.slowdown.set(self._slowdown)

    def _check_wait(self, rows: int, remaining: float | None) -> float | None:
        """Refuses a request that cannot be answered in time; returns its predicted time in the
        server (None for an idle server, which takes any request the limits allow)."""
        if not self._inflight_rows:
            return None
        wait = self.expected_wait()
        if remaining is not None and remaining < wait:
            raise DeadlineExceeded(
                f"deadline in {remaining * 1e3:.1f} ms is shorter than the expected wait of {wait * 1e3:.1f} ms for the "
                f"{self._inflight_rows} rows admitted ahead; not queued (retry later or with a longer deadline)",
                reason="deadline_unreachable",
            )
        if self.latency_budget_s is not None:
            total = self.expected_wait(rows)
            if total > self.latency_budget_s:
                raise Overloaded(
                    f"server overloaded: {self._inflight_rows} rows admitted ahead would keep these {rows} rows "
                    f"~{total * 1e3:.1f} ms, over the latency budget of {self.latency_budget_s * 1e3:.0f} ms; retry with backoff",
                    reason="over_latency_budget",
                )
            return total
        return self.expected_wait(rows)
