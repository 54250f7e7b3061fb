"""The gRPC inference server: Inference service + grpc.health.v1 + reflection.

    server, port = create_server("runs/ihas/bundle", "127.0.0.1:0")
    ...
    server.stop(grace=5).wait()

The server starts listening before the bundle loads, with health NOT_SERVING, so load
balancers and probes see "alive but not ready" rather than a refused connection; health
turns SERVING once the bundle is loaded and verified. The servicer is thin: decoding and
scoring live in `serving.wire` / `serving.predictor`, status codes in
`serving.interceptors`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import wire
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.bundle import load_bundle
from serving.encode import Limits
from serving.errors import NotReady
from serving.interceptors import ErrorMappingInterceptor
from serving.logs import log_event
from serving.predictor import Predictor

log = logging.getLogger("serving.server")

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # "embstack.v1.Inference"


@dataclass
class ServerConfig:
    """How the server runs.

    Args:
        max_workers: gRPC handler threads (each runs one RPC at a time).
        max_concurrent_rpcs: RPCs admitted at once (running + queued for a worker);
            more get RESOURCE_EXHAUSTED from gRPC instead of an unbounded queue.
        max_message_bytes: largest request accepted; larger → RESOURCE_EXHAUSTED.
        limits: rows per request and values per bag (larger → INVALID_ARGUMENT).
        torch_threads: intra-op threads per model call (process-wide); None keeps torch's
            default. Small batches gain nothing from more threads and contend for cores.
        dataset: refuse a bundle of another dataset (None: accept any).
    """

    max_workers: int = 4
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 16 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    torch_threads: int | None = None
    dataset: str | None = None


class ModelHost:
    """Owns the predictor that answers requests. Reading `current` is a single reference
    read, so a later hot reload can swap in a verified predictor without a lock on the
    request path."""

    def __init__(self) -> None:
        self._predictor: Predictor | None = None

    def current(self) -> Predictor:
        predictor = self._predictor
        if predictor is None:
            raise NotReady("no bundle loaded yet; retry when health is SERVING")
        return predictor

    def load(self, bundle_dir: str | Path, config: ServerConfig) -> Predictor:
        """Loads and verifies a bundle, then makes it current. Raises BundleError."""
        start = time.perf_counter()
        bundle = load_bundle(bundle_dir, dataset=config.dataset)
        predictor = Predictor(bundle, config.limits)
        self._predictor = predictor
        log_event(
            log, "bundle loaded", path=str(bundle_dir), version=bundle.version, dataset=bundle.manifest.dataset,
            clusters=bundle.num_clusters, seconds=round(time.perf_counter() - start, 3),
        )
        return predictor


class InferenceServicer(pb_grpc.InferenceServicer):
    """embstack.v1.Inference over the host's current predictor.

    Args:
        host: where the current predictor lives.
    """

    def __init__(self, host: ModelHost):
        self.host = host

    def Score(self, request, context):
        return wire.score(self.host.current(), request)

    def GetModelInfo(self, request, context):
        predictor = self.host.current()
        return wire.model_info(predictor.bundle, predictor.encoder.limits.max_rows)


@dataclass
class App:
    """A running server and what it serves.

    Args:
        server: the started grpc.Server.
        port: the bound port.
        host: the model host.
        health: the health servicer (status per service name).
    """

    server: grpc.Server
    port: int
    host: ModelHost
    health: health.HealthServicer

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> threading.Event:
        """NOT_SERVING first (so balancers stop sending), then stop; in-flight RPCs get `grace` s."""
        self.set_serving(False)
        return self.server.stop(grace)


def start_app(bundle_dir: str | Path, address: str = "127.0.0.1:0", config: ServerConfig | None = None) -> App:
    """Starts the server on `address`, loads the bundle, then reports SERVING.

    Args:
        bundle_dir: the bundle to serve.
        address: "host:port"; port 0 picks a free port.
        config: server settings.

    Raises BundleError (server stopped) when the bundle does not load, RuntimeError when
    the address cannot be bound.
    """
    config = config or ServerConfig()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="embstack-rpc"),
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    host = ModelHost()
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(host), server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot bind {address}")
    app = App(server, port, host, health_servicer)
    app.set_serving(False)
    server.start()
    log_event(log, "listening", address=address, port=port, max_workers=config.max_workers,
              max_concurrent_rpcs=config.max_concurrent_rpcs, torch_threads=torch.get_num_threads())
    try:
        host.load(bundle_dir, config)
    except BaseException:
        server.stop(None)
        raise
    app.set_serving(True)
    return app


def create_server(bundle_dir: str | Path, address: str = "127.0.0.1:0", config: ServerConfig | None = None) -> tuple[grpc.Server, int]:
    """Starts a server on `address` serving `bundle_dir`; returns (started server, port).

    Args:
        bundle_dir: the bundle to serve.
        address: "host:port"; port 0 picks a free port (what tests use).
        config: server settings.
    """
    app = start_app(bundle_dir, address, config)
    return app.server, app.port
