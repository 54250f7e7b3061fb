"""Serve a bundle over gRPC.

    .venv/bin/python -m serving --bundle runs/ihas/bundle --port 50051

Logs are JSON lines on stderr. SIGTERM / SIGINT: health turns NOT_SERVING, new RPCs are
refused, in-flight RPCs get --grace seconds to finish, then the process exits 0.
Exit code 2: the bundle did not load (the message names the file).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from serving.bundle import BundleError
from serving.encode import Limits
from serving.logs import configure, log_event
from serving.server import ServerConfig, start_app

log = logging.getLogger("serving")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m serving", description="embstack gRPC inference server")
    ap.add_argument("--bundle", required=True, help="bundle directory (written by serving.bundle.write_bundle)")
    ap.add_argument("--host", default="0.0.0.0", help="interface to bind (default all)")
    ap.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (logged)")
    ap.add_argument("--max-workers", type=int, default=4, help="gRPC handler threads")
    ap.add_argument("--max-concurrent-rpcs", type=int, default=64, help="admitted RPCs; beyond → RESOURCE_EXHAUSTED")
    ap.add_argument("--max-message-mb", type=float, default=16, help="largest request; beyond → RESOURCE_EXHAUSTED")
    ap.add_argument("--max-rows", type=int, default=4096, help="rows per Score request")
    ap.add_argument("--max-bag", type=int, default=1024, help="values per bag per row")
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per model call (1 suits small batches)")
    ap.add_argument("--dataset", default=None, help="refuse a bundle of another dataset")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds in-flight RPCs get on shutdown")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args.log_level)
    config = ServerConfig(
        max_workers=args.max_workers,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        limits=Limits(max_rows=args.max_rows, max_bag=args.max_bag),
        torch_threads=args.torch_threads,
        dataset=args.dataset,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        app = start_app(args.bundle, f"{args.host}:{args.port}", config)
    except BundleError as e:
        log_event(log, "bundle refused", logging.ERROR, error=str(e))
        return 2
    log_event(log, "serving", port=app.port, version=app.host.current().version)
    stop.wait()
    log_event(log, "draining", grace_s=args.grace)
    app.stop(args.grace).wait()
    log_event(log, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
