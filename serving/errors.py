"""Domain errors of the request path. Transport-free: `serving.interceptors` alone maps
them to gRPC status codes, so the predictor and the encoders never import grpc."""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error the request path raises on purpose.

    Args:
        message: what happened, for the caller.
        reason: why the request was refused unscored (the `reason` label of
            embstack_refusals_total); None leaves the class's own.
    """

    reason: str | None = None

    def __init__(self, message: str = "", *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidRequest(ServingError):
    """The caller's input is wrong (→ INVALID_ARGUMENT). The message names row and field.

    Args:
        message: what is wrong and how to fix it.
        row: index of the offending request row, when one row is at fault.
        field: name of the offending field, when one field is at fault.
    """

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.detail = message  # without the "row i, field f" prefix, for callers that re-place it
        self.row = row
        self.field = field


class NotReady(ServingError):
    """No bundle is loaded yet, or the server is draining (→ UNAVAILABLE)."""

    reason = "not_ready"


class Overloaded(ServingError):
    """The server refuses work it cannot finish in time (→ RESOURCE_EXHAUSTED)."""

    reason = "overloaded"


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before its rows were scored (→ DEADLINE_EXCEEDED);
    the rows were not worked on."""

    reason = "deadline_expired"


class Unauthenticated(ServingError):
    """An admin RPC without the right token (→ UNAUTHENTICATED)."""


class PermissionDenied(ServingError):
    """An admin RPC on a server that has admin RPCs switched off (→ PERMISSION_DENIED)."""
