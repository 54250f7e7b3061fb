"""Serve a bundle over gRPC.

    .venv/bin/python -m serving --bundle runs/ihas_ml100k/bundle --port 50051 --metrics-port 9100
    taskset -c 0 .venv/bin/python -m serving --bundle B --port 50051 --batching off

Logs are JSON lines on stderr (no progress output).
Signals:
  SIGHUP           reload --bundle (e.g. a symlink repointed at a new bundle): verify,
                   warm up, swap; a bundle that fails is logged and the old one serves on.
  SIGTERM, SIGINT  drain: health NOT_SERVING at once, keep answering for --drain-delay s
                   (so balancers stop sending), then refuse new RPCs, give in-flight ones
                   --grace s, exit 0.
Admin RPCs (embstack.v1.Admin/Reload) need the token from $EMBSTACK_ADMIN_TOKEN or
--admin-token-file; without one they are off.
Optional security: --tls-cert/--tls-key serve TLS (add --tls-client-ca for mutual TLS);
--auth-token-file or $EMBSTACK_AUTH_TOKEN makes every RPC but the health check (and
Admin, which has its own token) carry `authorization: Bearer <token>`. The tools take
the matching --tls-ca / --token-file (see serving.channels).
Exit code 2: the bundle did not load (the message names the file); 3: bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from serving.batcher import BatchConfig
from serving.bundle import BundleError
from serving.channels import AUTH_TOKEN_ENV, read_token
from serving.encode import Limits
from serving.logs import configure, log_event
from serving.config import ServerConfig, TlsConfig
from serving.server import App, start_app

log = logging.getLogger("serving")
TOKEN_ENV = "EMBSTACK_ADMIN_TOKEN"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m serving", description="embstack gRPC inference server",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python -m serving --bundle runs/ihas_ml100k/bundle --port 50051
  python -m serving --bundle runs/ihas_ml100k/bundle --port 50051 --metrics-port 9100 --host 0.0.0.0""")
    ap.add_argument("--bundle", required=True, help="bundle directory (written by serving.bundle.write_bundle)")
    ap.add_argument("--host", default="0.0.0.0", help="interface the gRPC port binds (default all)")
    ap.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (logged)")
    ap.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port; 0 picks one; default: off")
    ap.add_argument("--metrics-host", default=None,
                    help="interface the plain-HTTP metrics port binds (default: --host); e.g. 127.0.0.1 for a scraper on the same host")
    ap.add_argument("--max-workers", type=int, default=None, help="gRPC handler threads (default: sized for the cores available)")
    ap.add_argument("--max-inflight", type=int, default=64,
                    help="Score requests admitted at once; beyond → RESOURCE_EXHAUSTED, counted with its reason")
    ap.add_argument("--latency-budget-ms", type=float, default=25.0,
                    help="refuse (RESOURCE_EXHAUSTED, counted) a request the rows already admitted would keep longer; 0: no budget")
    ap.add_argument("--max-concurrent-rpcs", type=int, default=None,
                    help="gRPC's own last-resort cap, refused uncounted (default: 4 x --max-inflight)")
    ap.add_argument("--max-message-mb", type=float, default=16, help="largest request; beyond → RESOURCE_EXHAUSTED")
    ap.add_argument("--max-rows", type=int, default=4096, help="rows per Score request")
    ap.add_argument("--max-bag", type=int, default=1024, help="values per bag per row")
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per model call (1 suits small batches)")
    ap.add_argument("--batching", choices=("on", "off"), default="on", help="micro-batch concurrent requests")
    ap.add_argument("--batch-max-rows", type=int, default=1024, help="rows per merged model call")
    ap.add_argument("--batch-max-wait-ms", type=float, default=0.0, help="hold a part-full batch open this long (0: take what is queued)")
    ap.add_argument("--batch-max-queue-rows", type=int, default=16384, help="rows waiting for a batch worker; beyond → RESOURCE_EXHAUSTED")
    ap.add_argument("--batch-workers", type=int, default=None, help="batch worker threads (default: one per available core)")
    ap.add_argument("--admin-token-file", default=None, help=f"file holding the Admin RPC token (or set ${TOKEN_ENV})")
    ap.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve gRPC over TLS (with --tls-key)")
    ap.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    ap.add_argument("--tls-client-ca", default=None, help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    ap.add_argument("--auth-token-file", default=None,
                    help=f"file holding the bearer token every RPC but health must carry (or set ${AUTH_TOKEN_ENV}); default: none")
    ap.add_argument("--dataset", default=None, help="refuse a bundle of another dataset")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds in-flight RPCs get on shutdown")
    ap.add_argument("--drain-delay", type=float, default=0.0, help="seconds to keep answering after SIGTERM with health NOT_SERVING")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def admin_token(args: argparse.Namespace) -> str | None:
    """The admin token: --admin-token-file wins over $EMBSTACK_ADMIN_TOKEN; None = admin off."""
    return read_token(args.admin_token_file, TOKEN_ENV)


def tls_config(args: argparse.Namespace) -> TlsConfig | None:
    """TLS settings from --tls-cert/--tls-key/--tls-client-ca; None = plaintext."""
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("give --tls-cert and --tls-key together")
    return TlsConfig.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)


def build_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        max_workers=args.max_workers,
        max_inflight=args.max_inflight,
        latency_budget_ms=args.latency_budget_ms or None,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        limits=Limits(max_rows=args.max_rows, max_bag=args.max_bag),
        torch_threads=args.torch_threads,
        dataset=args.dataset,
        batching=BatchConfig(
            enabled=args.batching == "on", max_rows=args.batch_max_rows, max_wait_ms=args.batch_max_wait_ms,
            max_queue_rows=args.batch_max_queue_rows, workers=args.batch_workers,
        ),
        admin_token=admin_token(args),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host if args.metrics_host is not None else args.host,
        tls=tls_config(args),
        auth_token=read_token(args.auth_token_file, AUTH_TOKEN_ENV),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args.log_level)
    try:
        config = build_config(args)
    except (OSError, ValueError) as e:
        log_event(log, "bad arguments", logging.ERROR, error=str(e))
        return 3
    stop = threading.Event()
    reload_wanted = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_wanted.set())
    try:
        app = start_app(args.bundle, f"{args.host}:{args.port}", config)
    except BundleError as e:
        log_event(log, "bundle refused", logging.ERROR, error=str(e))
        return 2
    log_event(log, "serving", port=app.port, metrics_port=app.metrics_port, version=app.host.version)
    threading.Thread(target=reload_on_signal, args=(app, reload_wanted, stop), name="embstack-sighup", daemon=True).start()
    stop.wait()
    log_event(log, "draining", drain_delay_s=args.drain_delay, grace_s=args.grace)
    app.draining = True
    app.set_serving(False)
    time.sleep(args.drain_delay)
    app.stop(args.grace).wait()
    log_event(log, "stopped")
    return 0


def reload_on_signal(app: App, wanted: threading.Event, stop: threading.Event) -> None:
    """Runs a reload of --bundle for each SIGHUP (signals arriving during one coalesce)."""
    while not stop.is_set():
        wanted.wait()
        wanted.clear()
        if stop.is_set():
            return
        log_event(log, "reload requested", signal="SIGHUP", path=str(app.bundle_dir))
        try:
            predictor, previous = app.reload()
        except BundleError:
            continue  # logged by App.reload; the old bundle keeps serving
        except Exception as e:  # never let a reload failure end the signal thread
            log_event(log, "reload failed", logging.ERROR, exc_info=True, error=str(e))
            continue
        log_event(log, "reloaded", version=predictor.version, previous=previous)


if __name__ == "__main__":
    sys.exit(main())
