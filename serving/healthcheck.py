"""Probe a server's standard grpc.health.v1 service (the serving image's HEALTHCHECK).

    .venv/bin/python -m serving.healthcheck --target 127.0.0.1:50051
    .venv/bin/python -m serving.healthcheck --target HOST:PORT --service embstack.v1.Inference

Exit 0 when the service is SERVING; 1 otherwise (NOT_SERVING while loading or draining,
unknown service, unreachable, timeout), with the reason on stderr. Imports neither torch
nor the model code, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving?, status name or error) of `service` at `target`."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as e:
        return False, f"{e.code().name}: {e.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the server")
    ap.add_argument("--service", default="", help='service name ("" = the whole server)')
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = ap.parse_args(argv)
    ok, status = check(args.target, args.service, args.timeout)
    print(f"healthcheck: {args.target} {args.service or '(server)'}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
