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
  deadline_unreachable  DEADLINE_EXCEEDED   the queue's expected wait outlasts the deadline
  too_many_requests     RESOURCE_EXHAUSTED  `max_inflight` Score requests already admitted
The queue checks need the micro-batcher's queue; with batching off, handler threads score
directly and only the first two apply. The batcher repeats the room check when the rows
are queued, since other requests may have filled the queue while this one decoded.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from serving.batcher import MicroBatcher
from serving.errors import DeadlineExceeded, Overloaded
from serving.metrics import ServerMetrics


class Admission:
    """Admits or refuses Score requests and counts those in flight.

    Args:
        max_inflight: Score requests admitted at once; more → RESOURCE_EXHAUSTED.
        batcher: the micro-batcher whose queue bounds admission (None with batching off).
        metrics: where the in-flight gauge lives (optional).
    """

    def __init__(self, max_inflight: int, batcher: MicroBatcher | None = None, metrics: ServerMetrics | None = None):
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight, self.batcher, self.metrics = max_inflight, batcher, metrics
        self._inflight = 0
        self._lock = threading.Lock()

    @property
    def inflight(self) -> int:
        return self._inflight

    @contextmanager
    def admit(self, rows: int, deadline: float | None) -> Iterator[None]:
        """Raises DeadlineExceeded or Overloaded (with a reason) unless the request can be
        taken; otherwise counts it in flight until the block ends.

        Args:
            rows: rows the request says it carries (not yet validated).
            deadline: the caller's deadline on `time.monotonic()`; None without one.
        """
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("deadline expired before the request was read; not scored", reason="deadline_expired")
        self._check_queue(rows, None if deadline is None else deadline - now)
        with self._lock:
            if self._inflight >= self.max_inflight:
                raise Overloaded(
                    f"server overloaded: {self._inflight} requests in flight (limit {self.max_inflight}); retry with backoff",
                    reason="too_many_requests",
                )
            self._inflight += 1
        if self.metrics is not None:
            self.metrics.inflight.inc()
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
            if self.metrics is not None:
                self.metrics.inflight.dec()

    def _check_queue(self, rows: int, remaining: float | None) -> None:
        if self.batcher is None:
            return
        self.batcher.check_room(rows)
        wait = self.batcher.expected_wait()
        if remaining is not None and remaining < wait:
            raise DeadlineExceeded(
                f"deadline in {remaining * 1e3:.1f} ms is shorter than the expected wait of {wait * 1e3:.1f} ms for the "
                f"{self.batcher.queued_rows} rows queued ahead; not queued (retry later or with a longer deadline)",
                reason="deadline_unreachable",
            )
