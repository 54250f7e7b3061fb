"""Prometheus text-format metrics (exposition format 0.0.4) on a small HTTP endpoint.

    metrics = ServerMetrics()
    endpoint = MetricsEndpoint(metrics.registry, "0.0.0.0", 9100)   # GET /metrics
    ...
    endpoint.close()

Standard library only (a thread running `http.server`): the request path records into
plain counters under a lock and a scrape renders them. What is recorded:

    embstack_requests_total{method,code}         RPCs answered, by gRPC status code
    embstack_request_duration_seconds{method}    handler latency histogram
    embstack_request_rows                        rows per Score request
    embstack_cluster_rows_total{cluster}         rows scored by each cluster model
    embstack_batch_rows / embstack_batch_requests  rows / requests per model call (micro-batching)
    embstack_queue_wait_seconds                  time a request waited for a batch worker
    embstack_queue_rows                          rows waiting for a batch worker now
    embstack_reloads_total{result}               hot reloads, "ok" or "failed"
    embstack_bundle_info{version}                1 for the bundle being served

RPCs that gRPC itself refuses before a handler runs (beyond --max-concurrent-rpcs, or a
message over --max-message-mb) are answered RESOURCE_EXHAUSTED by gRPC and are not
counted here; the client sees them.
"""

from __future__ import annotations

import bisect
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(x: float) -> str:
    x = float(x)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class _Metric:
    """One named metric family.

    Args:
        name: metric name (Prometheus naming: snake_case, unit suffix).
        help: one-line description (the # HELP line).
        labels: label names; every sample gives one value per name.
    """

    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self._samples()

    def _samples(self) -> Iterable[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + by

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            yield f"{self.name}{_labels(self.label_names, key)} {_number(v)}"


class Gauge(_Metric):
    """A value that goes up and down.

    Args:
        name, help, labels: as for every metric.
        source: read at scrape time instead of set values (unlabelled gauges only).
    """

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), source: Callable[[], float] | None = None):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._source = source

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, value: float, *labels: str) -> None:
        """Drops every other label set, then sets this one (e.g. the served version)."""
        key = self._key(labels)
        with self._lock:
            self._values = {key: float(value)}

    def _samples(self) -> Iterable[str]:
        if self._source is not None:
            yield f"{self.name} {_number(self._source())}"
            return
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            yield f"{self.name}{_labels(self.label_names, key)} {_number(v)}"


class Histogram(_Metric):
    """Observations counted into cumulative `le` buckets, with their sum and count.

    Args:
        name, help, labels: as for every metric.
        buckets: upper bounds of the buckets (+Inf is added).
    """

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._values: dict[tuple[str, ...], list] = {}  # key → [counts per bucket + overflow, sum]

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            entry = self._values.get(key)
            if entry is None:
                entry = self._values[key] = [[0] * (len(self.buckets) + 1), 0.0]
            entry[0][i] += 1
            entry[1] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((k, (list(v[0]), v[1])) for k, v in self._values.items())
        for key, (counts, total) in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts):
                cumulative += n
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}"
            yield f"{self.name}_count{_labels(self.label_names, key)} {cumulative}"


class Registry:
    """The metrics one endpoint exposes, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


class ServerMetrics:
    """Every metric the inference server records (see the module docstring)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests: Counter = r.add(Counter("embstack_requests_total", "RPCs answered, by method and gRPC status code.", ("method", "code")))
        self.latency: Histogram = r.add(Histogram("embstack_request_duration_seconds", "RPC handler latency.", ("method",)))
        self.request_rows: Histogram = r.add(Histogram("embstack_request_rows", "Rows per Score request.", buckets=ROW_BUCKETS))
        self.cluster_rows: Counter = r.add(Counter("embstack_cluster_rows_total", "Rows scored, by the cluster model that scored them.", ("cluster",)))
        self.batch_rows: Histogram = r.add(Histogram("embstack_batch_rows", "Rows per model call (after micro-batching).", buckets=ROW_BUCKETS))
        self.batch_requests: Histogram = r.add(Histogram("embstack_batch_requests", "Requests merged into one model call.", buckets=COUNT_BUCKETS))
        self.queue_wait: Histogram = r.add(Histogram("embstack_queue_wait_seconds", "Time a request waited for a batch worker."))
        self._queue_source: Callable[[], float] = lambda: 0.0
        r.add(Gauge("embstack_queue_rows", "Rows waiting for a batch worker.", source=lambda: self._queue_source()))
        self.reloads: Counter = r.add(Counter("embstack_reloads_total", "Hot reloads, by result.", ("result",)))
        self.bundle: Gauge = r.add(Gauge("embstack_bundle_info", "1 for the bundle version being served.", ("version",)))

    def watch_queue(self, source: Callable[[], float]) -> None:
        """Reads the queue depth from `source` at scrape time."""
        self._queue_source = source

    def observe_clusters(self, clusters) -> None:
        """Counts rows per cluster from one response's cluster ids."""
        counts: dict[int, int] = {}
        for c in clusters.tolist() if hasattr(clusters, "tolist") else clusters:
            counts[c] = counts.get(c, 0) + 1
        for c, n in counts.items():
            self.cluster_rows.inc(str(c), by=n)


class MetricsEndpoint:
    """Serves `GET /metrics` from a daemon thread.

    Args:
        registry: what to expose.
        host: interface to bind.
        port: port to bind; 0 picks a free one (see `.port`).
    """

    def __init__(self, registry: Registry, host: str = "0.0.0.0", port: int = 0):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] not in ("/metrics", "/metrics/"):
                    self.send_error(404, "try /metrics")
                    return
                body = registry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes are not worth a log line
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="embstack-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
