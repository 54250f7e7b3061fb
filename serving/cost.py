"""The recent cost of a model call, which turns the requests and rows waiting into seconds.

Whoever scores (the micro-batcher's workers, or handler threads with batching off)
records each model call; admission asks what the calls and rows already admitted will
take. A call costs a fixed part (the Python dispatch of the exported programs, ~1–2 ms
whatever the rows) plus a part per row, so the cost is fitted as `fixed + per_row × rows`
by least squares over the recent calls (exponentially decayed). A single seconds/rows
ratio would charge small requests the fixed part again for every row. When the recent
calls all had about the same size the two parts cannot be told apart, and the ratio is
used: the right answer on average for that mix.

    cost = ScoringCost()
    with cost.call(rows=700):        # recorded when the block ends without an error
        ...score...
    cost.seconds(calls=3, rows=300)   # 0.0 before anything was scored
    cost.remaining()                  # what the calls in progress still need, summed

The calls in progress are tracked as well, so that admission charges a batch that is
nearly done only for what it still needs, not for all of its rows again.
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class ScoringCost:
    """Decayed least-squares fit of seconds = fixed + per_row × rows over recent calls.

    Args:
        decay: weight each older call keeps per new call (0.95: the last ~20 calls count).
    """

    def __init__(self, decay: float = 0.95):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._w = self._r = self._rr = self._s = self._rs = 0.0
        self._fit = (0.0, 0.0)
        self._lock = threading.Lock()
        self._busy: dict[int, tuple[int, float]] = {}  # call id → (rows, start)
        self._ids = itertools.count()

    @contextmanager
    def call(self, rows: int) -> Iterator[None]:
        """Marks a model call of `rows` rows in progress; records its seconds when the
        block ends without an error."""
        key, start = next(self._ids), time.monotonic()
        with self._lock:
            self._busy[key] = (rows, start)
        try:
            yield
            self.record(rows, time.monotonic() - start)
        finally:
            with self._lock:
                del self._busy[key]

    def in_progress(self) -> tuple[int, int]:
        """(calls, rows) being scored now."""
        with self._lock:
            return len(self._busy), sum(r for r, _ in self._busy.values())

    def remaining(self) -> float:
        """Seconds the calls in progress still need by the fitted cost, summed (a call
        past its expected time counts 0)."""
        now = time.monotonic()
        with self._lock:
            busy = list(self._busy.values())
        return sum(max(0.0, self.seconds(1, rows) - (now - start)) for rows, start in busy)

    def record(self, rows: int, seconds: float) -> None:
        with self._lock:
            d = self.decay
            self._w = d * self._w + 1.0
            self._r = d * self._r + rows
            self._rr = d * self._rr + rows * rows
            self._s = d * self._s + seconds
            self._rs = d * self._rs + rows * seconds
            self._fit = self._solve()

    def _solve(self) -> tuple[float, float]:
        mean_r, mean_s = self._r / self._w, self._s / self._w
        var = self._rr / self._w - mean_r * mean_r
        if mean_r <= 0:
            return mean_s, 0.0
        if var <= (0.05 * mean_r) ** 2:  # sizes alike: only the ratio is known
            return 0.0, mean_s / mean_r
        per_row = (self._rs / self._w - mean_r * mean_s) / var
        fixed = mean_s - per_row * mean_r
        if per_row < 0:  # noise: bigger calls no slower
            return mean_s, 0.0
        if fixed < 0:
            return 0.0, mean_s / mean_r
        return fixed, per_row

    @property
    def fixed(self) -> float:
        """Seconds a call costs whatever its rows (0.0 before any call)."""
        return self._fit[0]

    @property
    def per_row(self) -> float:
        """Seconds each row adds to a call (0.0 before any call)."""
        return self._fit[1]

    def seconds(self, calls: int, rows: int) -> float:
        """What `calls` model calls scoring `rows` rows in all take, one after another."""
        fixed, per_row = self._fit
        return calls * fixed + rows * per_row
