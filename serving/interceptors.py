"""Domain errors → gRPC status codes, in one place, for every unary RPC of the server.

Servicers stay thin and transport-agnostic code raises `serving.errors` types; this
interceptor turns them into status codes, a log line and the request metrics. It also
parses the request bytes itself, so a message that is not valid protobuf is the caller's
INVALID_ARGUMENT rather than gRPC's generic INTERNAL. Anything unexpected becomes
INTERNAL with the traceback logged, never a dead server thread. A refusal whose error
carries a reason (load shed, deadline unreachable, not ready) is also counted by code and
reason. RESOURCE_EXHAUSTED for oversized messages and for RPCs beyond
`maximum_concurrent_rpcs` is produced by gRPC itself before a handler runs.
"""

from __future__ import annotations

import hmac
import logging
import time

import grpc
from google.protobuf.message import DecodeError

from serving.bundle import BundleError
from serving.errors import DeadlineExceeded, InvalidRequest, NotReady, Overloaded, PermissionDenied, Unauthenticated
from serving.logs import log_event
from serving.metrics import ServerMetrics

log = logging.getLogger("serving.rpc")

# Most specific first: the first matching type decides.
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),
)
# Logged at WARNING: an operator should see these (failed reloads, bad admin tokens).
_WARN = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a domain error; None for an unexpected exception."""
    for typ, code in STATUS:
        if isinstance(exc, typ):
            return code
    return None


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Wraps unary-unary handlers: parses the request, maps domain errors to status codes,
    logs failures (successes at DEBUG) and records requests by code and latency.
    Streaming handlers (health Watch, reflection) pass through.

    Args:
        metrics: where requests and latencies are recorded; None records nothing.
    """

    def __init__(self, metrics: ServerMetrics | None = None):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        inner = handler.unary_unary
        parse = handler.request_deserializer
        metrics = self.metrics

        def call(raw, context):
            start = time.perf_counter()
            code, reason = grpc.StatusCode.OK, None
            try:
                try:
                    request = parse(raw) if parse is not None else raw
                except (DecodeError, ValueError, TypeError) as e:
                    raise InvalidRequest(f"request is not a valid {method.split('/')[0]} message: {type(e).__name__}") from None
                response = inner(request, context)
            except Exception as e:
                code = status_for(e) or grpc.StatusCode.INTERNAL
                ms = round((time.perf_counter() - start) * 1e3, 3)
                if code is grpc.StatusCode.INTERNAL and status_for(e) is None:
                    log_event(log, "rpc failed", logging.ERROR, exc_info=True, method=method, code="INTERNAL", ms=ms)
                    message = f"internal error ({type(e).__name__}); see server logs"
                else:
                    level = logging.WARNING if code in _WARN else logging.INFO
                    reason = getattr(e, "reason", None)
                    log_event(log, "rpc refused", level, method=method, code=code.name, reason=reason, ms=ms, error=str(e))
                    message = str(e)
                _record(metrics, method, code, start, reason)
                context.abort(code, message)
            _record(metrics, method, code, start)
            log_event(log, "rpc", logging.DEBUG, method=method, code="OK", ms=round((time.perf_counter() - start) * 1e3, 3))
            return response

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None, response_serializer=handler.response_serializer)


def _record(metrics: ServerMetrics | None, method: str, code: grpc.StatusCode, start: float, reason: str | None = None) -> None:
    if metrics is not None:
        metrics.requests.labels(method, code.name).inc()
        metrics.latency.labels(method).observe(time.perf_counter() - start)
        if reason is not None:
            metrics.refusals.labels(method, code.name, reason).inc()


# Methods a server with an auth token still answers without it: load balancers and probes
# check health anonymously, and Admin RPCs check their own (admin) token.
AUTH_EXEMPT = ("/grpc.health.v1.Health/", "/embstack.v1.Admin/")


def bearer_matches(metadata, token: str) -> bool:
    """Whether `metadata` carries `authorization: Bearer <token>` (constant-time compare)."""
    given = dict(metadata or ()).get("authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(given[len("Bearer "):].encode(), token.encode())


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses every RPC outside `exempt` without `authorization: Bearer <token>`
    (→ UNAUTHENTICATED), before its request is parsed. Installed inside
    ErrorMappingInterceptor, which maps, logs and counts the refusal of unary RPCs.

    Args:
        token: the token callers must present.
        exempt: method-name prefixes answered without it.
    """

    def __init__(self, token: str, exempt: tuple[str, ...] = AUTH_EXEMPT):
        if not token:
            raise ValueError("empty auth token")
        self.token, self.exempt = token, exempt

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self.exempt) or bearer_matches(handler_call_details.invocation_metadata, self.token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED as usual
        message = "missing or wrong token; send metadata 'authorization: Bearer <token>'"

        def deny_unary(request, context):
            raise Unauthenticated(message)

        def deny_stream(request_or_iterator, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(deny_unary, request_deserializer=None, response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(deny_stream, request_deserializer=None)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(deny_stream, request_deserializer=None)
        return grpc.stream_stream_rpc_method_handler(deny_stream, request_deserializer=None)
