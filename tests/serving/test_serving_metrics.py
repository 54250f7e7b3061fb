"""Prometheus text-format metrics: the format itself, and a scrape of a running server."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import grpc
import pytest
from rpc_helpers import row_request, rows_pb
from serving_fixtures import random_rows

from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict, dict]:
    """(samples {(name, frozenset(labels)): value}, types {name: type}) of a text exposition."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples, types


def scrape(port: int) -> tuple[dict, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"] == CONTENT_TYPE
        return parse(reply.read().decode())


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_text_format():
    r = Registry()
    c = r.add(Counter("t_total", "A counter.", ("code",)))
    g = r.add(Gauge("t_info", "A gauge.", ("version",)))
    h = r.add(Histogram("t_seconds", "A histogram.", buckets=(0.1, 1.0)))
    c.inc('we"ird\\lab\nel', by=2)
    g.replace(1, "v1")
    g.replace(1, "v2")
    for x in (0.05, 0.1, 0.5, 3.0):
        h.observe(x)
    text = r.render()
    assert '# TYPE t_total counter\nt_total{code="we\\"ird\\\\lab\\nel"} 2\n' in text
    assert 't_info{version="v2"} 1' in text and "v1" not in text
    assert 't_seconds_bucket{le="0.1"} 2\nt_seconds_bucket{le="1"} 3\nt_seconds_bucket{le="+Inf"} 4\n' in text
    assert "t_seconds_sum 3.65\nt_seconds_count 4\n" in text
    samples, types = parse(text)
    assert types == {"t_total": "counter", "t_info": "gauge", "t_seconds": "histogram"}
    with pytest.raises(ValueError):
        c.inc()  # wrong label count


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
    assert types["embstack_request_duration_seconds"] == "histogram" and types["embstack_requests_total"] == "counter"
    # histogram buckets are cumulative and end at the count
    buckets = sorted(
        (float("inf") if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), v)
        for k, v in after.items() if k[0] == "embstack_request_duration_seconds_bucket" and dict(k[1])["method"] == score
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == value(after, "embstack_request_duration_seconds_count", method=score)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert info.value.code == 404
