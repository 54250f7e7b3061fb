"""The gRPC inference server: Inference + Admin services, grpc.health.v1, reflection,
micro-batching, hot reload and a Prometheus endpoint:

    app = start_app("runs/ihas_ml100k/bundle", "127.0.0.1:0", ServerConfig(metrics_port=0))
    app.port, app.metrics_port          # the bound ports
    app.reload("runs/ihas_ml100k/bundle-v2")   # verify, warm up, swap; the old one serves on failure
    app.stop(grace=5).wait()

The server starts listening before the bundle loads, with health NOT_SERVING, so load
balancers and probes see "alive but not ready" rather than a refused connection; health
turns SERVING once the bundle is loaded and verified, and NOT_SERVING again while the
server drains. Servicers are thin: decoding in `serving.wire`, scoring in `serving.predictor`
/ `serving.batcher`, early refusals in `serving.admission`, codes in `serving.interceptors`.

Hot reload (Admin.Reload or SIGHUP via `python -m serving`): the new bundle is loaded beside
the old one, verified (schema version, every file's sha256 and size, the golden outputs of
every program, a warm-up of the golden rows through the whole request path) and swapped in
with one reference assignment. A request is scored entirely by the bundle it started with
and its response names that version; versions never go backwards for a client. A bundle
that fails any check is refused and the old one keeps serving.

Security (both optional): TLS on the gRPC port (`serving.config.TlsConfig`; with `client_ca`, mutual TLS)
and a bearer token every RPC carries except the health check (probes ask anonymously) and
Admin RPCs (their own admin token). The Prometheus endpoint is plain HTTP: bind it
(`metrics_host`, `--metrics-host`) to an interface only the scraper reaches.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import wire
from serving._proto.embstack.v1 import admin_pb2, admin_pb2_grpc
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.admission import Admission
from serving.batcher import DirectScorer, MicroBatcher
from serving.config import ServerConfig
from serving.cost import ScoringCost
from serving.bundle import BundleError, load_bundle
from serving.errors import NotReady, PermissionDenied, Unauthenticated
from serving.interceptors import ErrorMappingInterceptor, TokenAuthInterceptor, bearer_matches
from serving.logs import log_event
from serving.metrics import MetricsEndpoint, ServerMetrics
from serving.predictor import Predictor

log = logging.getLogger("serving.server")

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # "embstack.v1.Inference"
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name  # "embstack.v1.Admin"
_NO_DEADLINE = 1e8  # gRPC reports "no deadline" as a huge time remaining


class ModelHost:
    """Owns the predictor that answers requests. Reading `current` is a single reference
    read and a reload replaces it with a single assignment, so the request path takes no
    lock; loads are serialised among themselves.

    Args:
        config: server settings (dataset check, request limits).
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        self._predictor: Predictor | None = None
        self._load_lock = threading.Lock()

    def current(self) -> Predictor:
        predictor = self._predictor
        if predictor is None:
            raise NotReady("no bundle loaded yet; retry when health is SERVING", reason="no_bundle")
        return predictor

    @property
    def version(self) -> str | None:
        predictor = self._predictor
        return predictor.version if predictor is not None else None

    def load(self, bundle_dir: str | Path) -> Predictor:
        """Loads, verifies and warms up a bundle, then makes it current.

        Raises BundleError (the current predictor stays) when any check fails.
        """
        with self._load_lock:
            start = time.perf_counter()
            old = self._predictor
            bundle = load_bundle(bundle_dir, dataset=self.config.dataset, reuse=old.bundle.programs_by_sha256() if old else None)
            predictor = Predictor(bundle, self.config.limits)
            predictor.warm_up()
            self._predictor = predictor  # the swap
            log_event(
                log, "bundle loaded", path=str(bundle_dir), version=bundle.version, previous=old.version if old else None,
                dataset=bundle.manifest.dataset, clusters=bundle.num_clusters, seconds=round(time.perf_counter() - start, 3),
            )
            return predictor


def _deadline(context) -> float | None:
    """The caller's deadline on the `time.monotonic()` clock; None without one."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return time.monotonic() + remaining


class InferenceServicer(pb_grpc.InferenceServicer):
    """embstack.v1.Inference over the host's current predictor.

    Args:
        host: where the current predictor lives.
        score: (predictor, rows, deadline) → prediction: the micro-batcher or a direct call.
        metrics: request metrics (rows per request and per cluster).
        admission: admits or refuses each Score request before it is decoded.
    """

    def __init__(self, host: ModelHost, score, metrics: ServerMetrics, admission: Admission):
        self.host, self.score, self.metrics, self.admission = host, score, metrics, admission

    def Score(self, request, context):
        deadline = _deadline(context)
        predictor = self.host.current()  # this request is validated and scored by this bundle
        rows = min(wire.claimed_rows(request), predictor.encoder.limits.max_rows)  # the decoder refuses more
        with self.admission.admit(rows, deadline):
            batch = wire.decode(predictor, request)
            self.metrics.request_rows.observe(batch.num_rows)
            pred = self.score(predictor, batch, deadline)
        self.metrics.observe_clusters(pred.clusters)
        return wire.response(pred)

    def GetModelInfo(self, request, context):
        predictor = self.host.current()
        return wire.model_info(predictor.bundle, predictor.encoder.limits.max_rows)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """embstack.v1.Admin: token-guarded operations on a running server.

    Args:
        app: the running server.
    """

    def __init__(self, app: "App"):
        self.app = app

    def Reload(self, request, context):
        self._authorize(context)
        start = time.perf_counter()
        path = request.bundle_dir or str(self.app.bundle_dir)
        predictor, previous = self.app.reload(path)
        return admin_pb2.ReloadResponse(
            bundle_version=predictor.version, previous_version=previous or "", bundle_dir=path,
            seconds=time.perf_counter() - start,
        )

    def _authorize(self, context) -> None:
        token = self.app.config.admin_token
        if not token:
            raise PermissionDenied("admin RPCs are off: start the server with EMBSTACK_ADMIN_TOKEN or --admin-token-file")
        if not bearer_matches(context.invocation_metadata(), token):
            raise Unauthenticated("missing or wrong admin token; send metadata 'authorization: Bearer <token>'")


@dataclass
class App:
    """A running server and what it serves.

    Args:
        server: the started grpc.Server.
        port: the bound gRPC port.
        host: the model host.
        health: the health servicer (status per service name).
        config: the settings it runs with.
        bundle_dir: the bundle path it was started on (what a reload without a path loads).
        metrics: its metrics.
        batcher: the micro-batcher (None with batching off).
        metrics_endpoint: the Prometheus endpoint (None without --metrics-port).
    """

    server: grpc.Server
    port: int
    host: ModelHost
    health: health.HealthServicer
    config: ServerConfig
    bundle_dir: Path
    metrics: ServerMetrics
    batcher: MicroBatcher | None = None
    metrics_endpoint: MetricsEndpoint | None = None
    draining: bool = False

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_endpoint.port if self.metrics_endpoint is not None else None

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def reload(self, bundle_dir: str | Path | None = None) -> tuple[Predictor, str | None]:
        """Verifies `bundle_dir` (default: the startup path) and swaps it in.

        Returns (new predictor, previous version). Raises BundleError — logged, counted,
        and the old bundle keeps serving — or NotReady while draining.
        """
        path = Path(bundle_dir) if bundle_dir is not None else self.bundle_dir
        if self.draining:
            raise NotReady("server is draining; reload refused", reason="draining")
        previous = self.host.version
        try:
            predictor = self.host.load(path)
        except BundleError as e:
            self.metrics.reloads.labels("failed").inc()
            log_event(log, "reload refused", logging.ERROR, path=str(path), error=str(e), serving=self.host.version)
            raise
        self.metrics.reloads.labels("ok").inc()
        self.metrics.serving(predictor.version)
        return predictor, previous

    def stop(self, grace: float | None = None) -> threading.Event:
        """NOT_SERVING, refuse new RPCs, give in-flight ones `grace` s, then stop the batch
        workers and the metrics endpoint. The returned event is set when all is down."""
        self.draining = True
        self.set_serving(False)
        stopped = self.server.stop(grace)
        done = threading.Event()

        def finish() -> None:
            stopped.wait()
            if self.batcher is not None:
                self.batcher.close()
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()
            done.set()

        threading.Thread(target=finish, name="embstack-stop", daemon=True).start()
        return done


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
    metrics = ServerMetrics()
    threads = config.handler_threads()
    interceptors = [ErrorMappingInterceptor(metrics)]
    if config.auth_token:
        interceptors.append(TokenAuthInterceptor(config.auth_token))  # inside: refusals are mapped and counted
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embstack-rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
        ],
        maximum_concurrent_rpcs=config.concurrency_cap(),
    )
    host = ModelHost(config)
    cost = ScoringCost()
    batcher = MicroBatcher(config.batching, metrics, cost) if config.batching.enabled else None
    score = batcher.submit if batcher is not None else DirectScorer(config.batching.workers, metrics, cost).submit
    budget = None if config.latency_budget_ms is None else config.latency_budget_ms / 1e3
    call_rows = config.batching.max_rows if batcher is not None else None
    admission = Admission(config.max_inflight, cost, config.batching.workers, call_rows, budget, batcher, metrics)
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(host, score, metrics, admission), server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(address, config.tls.credentials()) if config.tls else server.add_insecure_port(address)
    if port == 0:
        if batcher is not None:
            batcher.close()
        raise RuntimeError(f"cannot bind {address}")
    app = App(server, port, host, health_servicer, config, Path(bundle_dir), metrics, batcher)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(app), server)
    app.set_serving(False)
    try:
        if config.metrics_port is not None:
            app.metrics_endpoint = MetricsEndpoint(metrics.registry, config.metrics_host, config.metrics_port)
        server.start()
        log_event(
            log, "listening", address=address, port=port, metrics_port=app.metrics_port, handler_threads=threads,
            max_inflight=config.max_inflight, latency_budget_ms=config.latency_budget_ms, max_concurrent_rpcs=config.concurrency_cap(), torch_threads=torch.get_num_threads(),
            batching=config.batching.enabled, batch_max_rows=config.batching.max_rows, batch_max_wait_ms=config.batching.max_wait_ms,
            batch_workers=config.batching.workers if config.batching.enabled else 0, admin=bool(config.admin_token),
            tls=bool(config.tls), mutual_tls=bool(config.tls and config.tls.client_ca), auth=bool(config.auth_token),
        )
        predictor = host.load(bundle_dir)
    except BaseException:
        app.draining = True
        app.stop(None).wait(10)
        raise
    metrics.serving(predictor.version)
    app.set_serving(True)
    return app

