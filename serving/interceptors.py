"""Domain errors → gRPC status codes, in one place, for every unary RPC of the server.

Servicers stay thin and transport-agnostic code raises `serving.errors` types; this
interceptor turns them into status codes and a log line. Anything unexpected becomes
INTERNAL with the traceback logged, never a dead server thread. RESOURCE_EXHAUSTED for
oversized messages and for RPCs beyond `maximum_concurrent_rpcs` is produced by gRPC
itself before a handler runs.
"""

from __future__ import annotations

import logging
import time

import grpc

from serving.bundle import BundleError
from serving.errors import InvalidRequest, NotReady, Overloaded
from serving.logs import log_event

log = logging.getLogger("serving.rpc")

# Most specific first: the first matching type decides.
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a domain error; None for an unexpected exception."""
    for typ, code in STATUS:
        if isinstance(exc, typ):
            return code
    return None


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Wraps unary-unary handlers: domain errors → status codes; logs failures (and
    successes at DEBUG). Streaming handlers (health Watch, reflection) pass through."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        def call(request, context):
            start = time.perf_counter()
            try:
                response = inner(request, context)
            except Exception as e:
                code = status_for(e)
                ms = round((time.perf_counter() - start) * 1e3, 3)
                if code is None:
                    log_event(log, "rpc failed", logging.ERROR, exc_info=True, method=method, code="INTERNAL", ms=ms)
                    context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); see server logs")
                level = logging.WARNING if code is grpc.StatusCode.FAILED_PRECONDITION else logging.INFO
                log_event(log, "rpc refused", level, method=method, code=code.name, ms=ms, error=str(e))
                context.abort(code, str(e))
            log_event(log, "rpc", logging.DEBUG, method=method, code="OK", ms=round((time.perf_counter() - start) * 1e3, 3))
            return response

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
