"""Probe a server's standard grpc.health.v1 service (the serving image's HEALTHCHECK).

    .venv/bin/python -m serving.healthcheck --target 127.0.0.1:50051
    .venv/bin/python -m serving.healthcheck --target HOST:PORT --service embstack.v1.Inference
    .venv/bin/python -m serving.healthcheck --target HOST:PORT --tls-ca ca.pem   # a TLS server

Exit 0 when the service is SERVING; 1 otherwise (NOT_SERVING while loading or draining,
unknown service, unreachable, timeout), with the reason on stderr. The health service
needs no token, even on a server that asks one for everything else. Imports neither torch
nor the model code, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import channels


def check(target: str, service: str = "", timeout: float = 3.0, tls: SimpleNamespace | None = None) -> tuple[bool, str]:
    """(serving?, status name or error) of `service` at `target`; `tls`: the
    serving.channels TLS options (tls_ca, tls_cert, tls_key, tls_server_name), None = plaintext."""
    try:
        with channels.open_channel(SimpleNamespace(**{**vars(tls or SimpleNamespace()), "target": target})) as channel:
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
    channels.add_arguments(ap, token=False)
    args = ap.parse_args(argv)
    try:
        ok, status = check(args.target, args.service, args.timeout, tls=args)
    except (OSError, ValueError) as e:
        ok, status = False, str(e)
    print(f"healthcheck: {args.target} {args.service or '(server)'}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
