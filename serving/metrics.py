"""The server's Prometheus metrics (prometheus_client), one registry per server.

    metrics = ServerMetrics()
    endpoint = MetricsEndpoint(metrics.registry, "127.0.0.1", 9100)   # GET /metrics
    ...
    endpoint.close()

Each server gets its own CollectorRegistry rather than the library's global one: tests
and tools run several servers in one process, and a global registry would refuse the
second server's metric names. What is recorded:

    embstack_requests_total{method,code}         RPCs answered, by gRPC status code
    embstack_refusals_total{method,code,reason}  RPCs refused unscored: load shed, deadline
                                                 unreachable or expired, not ready
    embstack_request_duration_seconds{method}    handler latency histogram
    embstack_request_rows                        rows per Score request
    embstack_cluster_rows_total{cluster}         rows scored by each cluster model
    embstack_batch_rows / embstack_batch_requests  rows / requests per model call (micro-batching)
    embstack_queue_wait_seconds                  time a request waited for a batch worker
    embstack_queue_rows                          rows waiting for a batch worker now
    embstack_inflight_requests                   Score requests admitted and not yet answered
    embstack_reloads_total{result}               hot reloads, "ok" or "failed"
    embstack_bundle_info{version}                1 for the bundle being served

The server's own admission control refuses (and counts) work it cannot take long before
gRPC's --max-concurrent-rpcs cap is reached; RPCs beyond that cap, or a message over
--max-message-mb, are answered RESOURCE_EXHAUSTED by gRPC before any handler runs, so
only the client sees those.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what a scrape that asks for no other format gets
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class _BundleInfo(Collector):
    """embstack_bundle_info{version} 1 for the served bundle. A collector rather than a
    labelled Gauge so that a reload swaps the version in one assignment: a scrape never
    sees two versions, or none, while a swap is under way."""

    def __init__(self) -> None:
        self.version: str | None = None

    def collect(self):
        family = GaugeMetricFamily("embstack_bundle_info", "1 for the bundle version being served.", labels=("version",))
        if self.version is not None:
            family.add_metric((self.version,), 1)
        yield family


class ServerMetrics:
    """Every metric the inference server records (see the module docstring)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("embstack_requests_total", "RPCs answered, by method and gRPC status code.", ("method", "code"), registry=r)
        self.refusals = Counter(
            "embstack_refusals_total", "RPCs refused without scoring, by method, gRPC status code and reason.",
            ("method", "code", "reason"), registry=r,
        )
        self.latency = Histogram("embstack_request_duration_seconds", "RPC handler latency.", ("method",), buckets=LATENCY_BUCKETS, registry=r)
        self.request_rows = Histogram("embstack_request_rows", "Rows per Score request.", buckets=ROW_BUCKETS, registry=r)
        self.cluster_rows = Counter("embstack_cluster_rows_total", "Rows scored, by the cluster model that scored them.", ("cluster",), registry=r)
        self.batch_rows = Histogram("embstack_batch_rows", "Rows per model call (after micro-batching).", buckets=ROW_BUCKETS, registry=r)
        self.batch_requests = Histogram("embstack_batch_requests", "Requests merged into one model call.", buckets=COUNT_BUCKETS, registry=r)
        self.queue_wait = Histogram("embstack_queue_wait_seconds", "Time a request waited for a batch worker.", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_rows = Gauge("embstack_queue_rows", "Rows waiting for a batch worker.", registry=r)
        self.queue_rows.set_function(lambda: 0.0)
        self.inflight = Gauge("embstack_inflight_requests", "Score requests admitted and not yet answered.", registry=r)
        self.slowdown = Gauge("embstack_admission_slowdown",
                              "Learnt ratio of a request's time in the server to the wait admission predicted for it.", registry=r)
        self.slowdown.set(1.0)
        self.reloads = Counter("embstack_reloads_total", "Hot reloads, by result.", ("result",), registry=r)
        self._bundle = _BundleInfo()
        r.register(self._bundle)

    def watch_queue(self, source: Callable[[], float]) -> None:
        """Reads the queue depth from `source` at scrape time."""
        self.queue_rows.set_function(source)

    def serving(self, version: str) -> None:
        """Marks `version` as the bundle being served (and no other)."""
        self._bundle.version = version

    def observe_clusters(self, clusters) -> None:
        """Counts rows per cluster from one response's cluster ids."""
        counts: dict[int, int] = {}
        for c in clusters.tolist() if hasattr(clusters, "tolist") else clusters:
            counts[c] = counts.get(c, 0) + 1
        for c, n in counts.items():
            self.cluster_rows.labels(str(c)).inc(n)

    def value(self, name: str, **labels: str) -> float:
        """One sample as a scrape would show it (0 when absent), e.g.
        value("embstack_requests_total", method=..., code="OK")."""
        return self.registry.get_sample_value(name, labels) or 0.0


class MetricsEndpoint:
    """Serves the registry over HTTP (prometheus_client's server) from a daemon thread.

    Args:
        registry: what to expose.
        host: interface to bind.
        port: port to bind; 0 picks a free one (see `.port`).
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0):
        self._server, self._thread = start_http_server(port, host, registry)
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
