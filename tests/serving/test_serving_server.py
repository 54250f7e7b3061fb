"""The gRPC server on 127.0.0.1:0 with the 2-cluster toy bundle."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rpc_helpers import column_request, free_port, health_status, row_request, rows_pb
from conftest import SHARED_MAX_ROWS
from serving_fixtures import DIMS, in_memory_scores, random_rows

import serving.server as server_mod
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.batcher import BatchConfig
from serving.encode import Limits
from serving.predictor import Predictor
from serving.config import ServerConfig
from serving.server import ADMIN_SERVICE, SERVICE, start_app

MAX_ROWS = SHARED_MAX_ROWS
CONFIG = ServerConfig(max_workers=2, max_message_bytes=256 * 1024, limits=Limits(max_rows=MAX_ROWS, max_bag=16))


@pytest.fixture
def served(shared_channel):
    return pb_grpc.InferenceStub(shared_channel), health_pb2_grpc.HealthStub(shared_channel), shared_channel


def test_health_serving(served):
    _, health, _ = served
    assert health_status(health) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(health, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_served_scores_equal_offline(served, spec, models, bundle):
    stub, _, _ = served
    rows = random_rows(spec, MAX_ROWS, seed=21)
    reply = stub.Score(row_request(rows), timeout=10)
    got_p, got_c = np.array(reply.probabilities, dtype=np.float32), np.array(reply.clusters)
    offline = Predictor(bundle).predict_rows(rows)
    want_p, want_c = in_memory_scores(spec, *models, rows)
    assert reply.bundle_version == "toy-v1"
    assert np.array_equal(got_c, offline.clusters) and np.array_equal(got_c, want_c)
    assert set(got_c.tolist()) == {0, 1}
    assert float(np.max(np.abs(got_p - offline.probabilities))) < 1e-6
    assert float(np.max(np.abs(got_p - want_p))) < 1e-6

    columnar = stub.Score(column_request(spec, rows), timeout=10)
    assert list(columnar.clusters) == list(reply.clusters)
    assert float(np.max(np.abs(np.array(columnar.probabilities) - got_p))) < 1e-6


def test_model_info(served, spec):
    stub, _, _ = served
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.bundle_version == "toy-v1" and info.dataset == spec.dataset and info.has_router
    assert [f.name for f in info.fields] == spec.names
    assert [dict(c.dims) for c in info.clusters] == DIMS
    assert info.max_batch_rows == MAX_ROWS and info.fields[1].num_embeddings == 50


def test_reflection_lists_services(served):
    _, _, channel = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {SERVICE, ADMIN_SERVICE, "grpc.health.v1.Health"} <= names


def test_oversized_message_is_resource_exhausted(served):
    stub, health, _ = served
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(rows_pb(i=0, user=pb.Value(token="x" * (300 * 1024))), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health_status(health) == health_pb2.HealthCheckResponse.SERVING


def test_not_serving_while_loading(bundle_dir, monkeypatch, start_server):
    release = threading.Event()
    real_load = server_mod.load_bundle

    def slow_load(*args, **kwargs):
        release.wait(20)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(server_mod, "load_bundle", slow_load)
    port = free_port()
    started = {}
    thread = threading.Thread(target=lambda: started.update(app=start_app(bundle_dir, f"127.0.0.1:{port}", CONFIG)))
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            health = health_pb2_grpc.HealthStub(channel)
            assert health_status(health) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.InferenceStub(channel).Score(rows_pb(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "no bundle loaded" in info.value.details()
            release.set()
            thread.join(30)
            deadline = time.monotonic() + 10
            while health_status(health) != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health_status(health) == health_pb2.HealthCheckResponse.SERVING
            assert pb_grpc.InferenceStub(channel).Score(rows_pb(), timeout=5).bundle_version == "toy-v1"
    finally:
        release.set()
        thread.join(30)
        if "app" in started:
            started["app"].stop(None)


def test_overload_and_internal_errors_keep_serving(bundle_dir, monkeypatch, start_server):
    """Beyond max_concurrent_rpcs → RESOURCE_EXHAUSTED (from gRPC); an unexpected
    exception → INTERNAL; the server keeps SERVING through both."""
    gate = threading.Event()
    entered = threading.Event()
    real_decode = server_mod.wire.decode

    def blocking_decode(predictor, request):
        if request.rows and request.rows[0].fields["user"].token == "block":
            entered.set()
            gate.wait(20)
        if request.rows and request.rows[0].fields["user"].token == "crash":
            raise RuntimeError("bug")
        return real_decode(predictor, request)

    monkeypatch.setattr(server_mod.wire, "decode", blocking_decode)
    config = ServerConfig(max_workers=2, max_concurrent_rpcs=1, limits=CONFIG.limits)
    app = start_server(bundle_dir, config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            pending = stub.Score.future(rows_pb(i=0, user=pb.Value(token="block")), timeout=20)
            assert entered.wait(10)
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(rows_pb(), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            assert pending.result().bundle_version == "toy-v1"
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(rows_pb(i=0, user=pb.Value(token="crash")), timeout=5)
            assert info.value.code() == grpc.StatusCode.INTERNAL and "RuntimeError" in info.value.details()
            assert health_status(health_pb2_grpc.HealthStub(channel)) == health_pb2.HealthCheckResponse.SERVING
            assert len(stub.Score(rows_pb(), timeout=5).probabilities) == 3
    finally:
        gate.set()


@pytest.mark.parametrize("batching", [True, False], ids=["batching-on", "batching-off"])
def test_stop_finishes_every_in_flight_request(batching, bundle_dir, bundle, spec, start_server, monkeypatch):
    """Requests in flight when the server starts draining (mid-model-call, or waiting for
    the one batch worker or scoring slot) all complete with the right scores; health turns NOT_SERVING at once;
    RPCs arriving after the stop are refused; the stop finishes once they are answered."""
    gate, scoring = threading.Event(), []
    real_predict = Predictor.predict

    def predict(self, batch):
        scoring.append(batch.num_rows)
        gate.wait(20)
        return real_predict(self, batch)

    config = ServerConfig(max_workers=8, limits=CONFIG.limits, batching=BatchConfig(enabled=batching, workers=1))
    app = start_server(bundle_dir, config)
    monkeypatch.setattr(Predictor, "predict", predict)  # after the warm-up
    requests = [random_rows(spec, n, seed=40 + n) for n in (3, 5, 8, 13, 21, 34)]
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = pb_grpc.InferenceStub(channel)
    try:
        pending = [stub.Score.future(row_request(rows), timeout=30) for rows in requests]
        deadline = time.monotonic() + 10

        def all_arrived() -> bool:  # one request is in a model call, the others wait for the one worker
            if batching:
                return len(scoring) == 1 and app.batcher.queued_rows == sum(map(len, requests)) - scoring[0]
            return len(scoring) == 1 and app.metrics.value("embstack_inflight_requests") == len(requests)

        while not all_arrived() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all_arrived()
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopped = app.stop(grace=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # what a balancer watching sees
        watch.cancel()
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{app.port}")).Score(row_request(requests[0]), timeout=5)
        # Refused either way: a connection made before the listener closed has its call
        # cancelled by the stopping server (CANCELLED); after that it is refused (UNAVAILABLE).
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not stopped.is_set() and not any(f.done() for f in pending)
    finally:
        gate.set()
    offline = Predictor(bundle, CONFIG.limits)
    for rows, f in zip(requests, pending):
        reply = f.result(timeout=20)
        want = real_predict(offline, offline.encoder.encode_rows(rows))
        assert list(reply.clusters) == want.clusters.tolist()
        assert float(np.max(np.abs(np.asarray(reply.probabilities) - want.probabilities))) < 1e-6
    assert stopped.wait(10)
    channel.close()
