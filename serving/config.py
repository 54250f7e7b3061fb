"""How the gRPC server runs: its TLS material and every operating setting (`ServerConfig`),
kept apart from the server that reads them so tools and tests can build a config without
pulling in the servicers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from serving.batcher import BatchConfig
from serving.encode import Limits

_SPARE_THREADS = 16


@dataclass
class TlsConfig:
    """TLS for the gRPC port (PEM bytes).

    Args:
        cert_chain: the server's certificate chain.
        private_key: its private key.
        client_ca: CA bundle for client certificates; given, clients must present a
            certificate it signed (mutual TLS).
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> "TlsConfig":
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), Path(client_ca).read_bytes() if client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None
        )


@dataclass
class ServerConfig:
    """How the server runs.

    Args:
        max_workers: gRPC handler threads; None sizes them for admission: admitted
            requests mostly wait (for a batch worker, or for a scoring slot with batching
            off), each on its own thread, where admission can see them.
        max_inflight: Score requests the server's admission control lets in at once
            (see `serving.admission`); more → RESOURCE_EXHAUSTED, counted with a reason.
        latency_budget_ms: admission refuses (RESOURCE_EXHAUSTED, over_latency_budget) a
            request that the rows already admitted would keep in the server longer than
            this, from the recent cost per row; None: no budget.
        max_concurrent_rpcs: gRPC's own cap on RPCs (running + waiting for a handler
            thread); beyond it gRPC answers RESOURCE_EXHAUSTED before any handler runs, so
            those refusals are not counted. None: 4 × max_inflight, a last resort well
            above what admission lets in.
        max_message_bytes: largest request accepted; larger → RESOURCE_EXHAUSTED.
        limits: rows per request and values per bag (larger → INVALID_ARGUMENT).
        torch_threads: intra-op threads per model call (process-wide); None keeps torch's
            default. Small batches gain nothing from more threads and contend for cores.
        dataset: refuse a bundle of another dataset (None: accept any).
        batching: micro-batching of concurrent requests (see `serving.batcher`).
        admin_token: the token Admin RPCs must present (`authorization: Bearer <token>`);
            None switches admin RPCs off (PERMISSION_DENIED).
        metrics_port: port of the Prometheus endpoint (GET /metrics); 0 picks a free one,
            None serves no metrics.
        metrics_host: interface the metrics endpoint binds (plain HTTP: one only the
            scraper reaches).
        tls: serve gRPC over TLS (None: plaintext).
        auth_token: the bearer token every RPC except health and Admin must carry
            (`authorization: Bearer <token>`, else UNAUTHENTICATED); None: no check.
    """

    max_workers: int | None = None
    max_inflight: int = 64
    latency_budget_ms: float | None = 25.0
    max_concurrent_rpcs: int | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    torch_threads: int | None = None
    dataset: str | None = None
    batching: BatchConfig = field(default_factory=BatchConfig)
    admin_token: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    tls: TlsConfig | None = None
    auth_token: str | None = None

    def handler_threads(self) -> int:
        if self.max_workers is not None:
            return self.max_workers
        # Admitted requests mostly wait, each on its own thread; the spare threads answer
        # health checks and refuse a flood at once instead of leaving it queued in front
        # of admission, where no deadline or budget is checked.
        return self.max_inflight + _SPARE_THREADS

    def concurrency_cap(self) -> int:
        return self.max_concurrent_rpcs if self.max_concurrent_rpcs is not None else 4 * self.max_inflight
