"""Prometheus metrics: a scrape of a running server, parsed with prometheus_client's own
parser, and the metric semantics the README promises."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rpc_helpers import row_request, rows_pb
from serving_fixtures import random_rows

from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.metrics import CONTENT_TYPE, MetricsEndpoint, ServerMetrics


def scrape(port: int, host: str = "127.0.0.1") -> tuple[dict, dict]:
    """(samples {(name, frozenset(labels)): value}, types {family: type}) of one scrape."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"] == CONTENT_TYPE
        text = reply.read().decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_each_server_has_its_own_registry_and_the_bundle_version_is_swapped_whole():
    a, b = ServerMetrics(), ServerMetrics()  # a global registry would refuse the second
    a.requests.labels("m", "OK").inc(2)
    a.serving("v1")
    a.serving("v2")
    endpoint = MetricsEndpoint(a.registry, "127.0.0.1", 0)
    try:
        samples, types = scrape(endpoint.port)
    finally:
        endpoint.close()
    assert value(samples, "embstack_requests_total", method="m", code="OK") == 2
    assert value(samples, "embstack_bundle_info", version="v2") == 1
    assert not any(k[0] == "embstack_bundle_info" and ("version", "v1") in k[1] for k in samples)
    assert types["embstack_requests"] == "counter" and types["embstack_bundle_info"] == "gauge"
    assert b.value("embstack_requests_total", method="m", code="OK") == 0


def test_scrape_a_running_server(shared_app, shared_channel, spec):
    port = shared_app.metrics_port
    before, types = scrape(port)
    stub = pb_grpc.InferenceStub(shared_channel)
    for seed in range(3):
        stub.Score(row_request(random_rows(spec, 5, seed=seed)), timeout=10)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            stub.Score(rows_pb(i=0, item=pb.Value(id=10**6)), timeout=10)
    after, _ = scrape(port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    score = "embstack.v1.Inference/Score"
    assert delta("embstack_requests_total", method=score, code="OK") == 3
    assert delta("embstack_requests_total", method=score, code="INVALID_ARGUMENT") == 2
    assert delta("embstack_request_duration_seconds_count", method=score) == 5
    assert delta("embstack_request_rows_count") == 3 and delta("embstack_request_rows_sum") == 15
    clusters = delta("embstack_cluster_rows_total", cluster="0") + delta("embstack_cluster_rows_total", cluster="1")
    assert clusters == 15
    assert delta("embstack_batch_rows_sum") == 15 and delta("embstack_batch_requests_sum") == 3
    assert value(after, "embstack_bundle_info", version="toy-v1") == 1
    assert ("embstack_queue_rows", frozenset()) in after
    assert types["embstack_request_duration_seconds"] == "histogram" and types["embstack_requests"] == "counter"
    # histogram buckets are cumulative and end at the count
    buckets = sorted(
        (float("inf") if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), v)
        for k, v in after.items() if k[0] == "embstack_request_duration_seconds_bucket" and dict(k[1])["method"] == score
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == value(after, "embstack_request_duration_seconds_count", method=score)
