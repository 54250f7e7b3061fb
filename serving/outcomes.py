"""What a load-test call's result means, and how the generator reacts to an outage.

`outcome` names a finished call: its status code, or CONNECTION_ERROR when the transport
failed before any server answered (server down, restarting, unreachable). `Backoff` is the
pause in sending after UNAVAILABLE (see `serving.loadtest`): without it a generator
hammers a restarting server with calls that fail in microseconds.
"""

from __future__ import annotations

import math
import re
import threading

import grpc

CONNECTION_ERROR = "connection"  # a call that got no status from the server
# What gRPC's transport writes into UNAVAILABLE when no server answered; the server's own
# UNAVAILABLE (not ready, draining) carries its message instead.
_TRANSPORT_FAILURE = re.compile(
    r"failed to connect|connection refused|connection reset|socket closed|broken pipe|goaway|endpoint closing|"
    r"connections to all backends failing|transport closed|cancelling all calls|unavailable: end of tcp stream",
    re.IGNORECASE,
)


def outcome(code: grpc.StatusCode | None, details: str | None) -> str:
    """The status code's name, or CONNECTION_ERROR when the transport failed before the
    server answered."""
    if code is grpc.StatusCode.UNAVAILABLE and _TRANSPORT_FAILURE.search(details or ""):
        return CONNECTION_ERROR
    return code.name if code is not None else "UNKNOWN"


class Backoff:
    """The pause in sending after UNAVAILABLE (see the module docstring); perf_counter time.

    Args:
        base: the first pause, seconds.
        cap: the longest pause, seconds.
    """

    def __init__(self, base: float = 0.05, cap: float = 2.0):
        self.base, self.cap = base, cap
        self.delay = 0.0
        self.began = self.until = -math.inf
        self.pauses, self.paused_s, self.skipped = 0, 0.0, 0
        self._lock = threading.Lock()

    def failed(self, sent: float, now: float) -> None:
        """An UNAVAILABLE answer to a request sent at `sent`. Requests sent before the
        current pause began failed for the same outage and do not lengthen it."""
        with self._lock:
            if sent < self.began:
                return
            self.delay = min(self.cap, 2 * self.delay if self.delay else self.base)
            self.began, self.until = now, now + self.delay
            self.pauses += 1
            self.paused_s += self.delay

    def succeeded(self) -> None:
        with self._lock:
            self.delay = 0.0

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def report(self) -> dict:
        return {"pauses": self.pauses, "paused_s": round(self.paused_s, 3), "skipped": self.skipped}

    def observe(self, result: str, sent: float, now: float) -> None:
        if result == "OK":
            self.succeeded()
        elif result in ("UNAVAILABLE", CONNECTION_ERROR):
            self.failed(sent, now)
