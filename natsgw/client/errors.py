"""Typed exceptions for failed calls: one class per gRPC status a caller can act on.

Every failure the gateway reports is a gRPC status with an actionable message; catching
``NotFound`` reads better than comparing ``exc.status`` and keeps the status for logging.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError


class NatsgwError(Exception):
    """A call failed; ``status`` is the gRPC status and ``message`` the gateway's explanation."""

    status: Status = Status.UNKNOWN

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


class InvalidArgument(NatsgwError):
    status = Status.INVALID_ARGUMENT


class NotFound(NatsgwError):
    status = Status.NOT_FOUND


class AlreadyExists(NatsgwError):
    status = Status.ALREADY_EXISTS


class PermissionDenied(NatsgwError):
    status = Status.PERMISSION_DENIED


class Unauthenticated(NatsgwError):
    status = Status.UNAUTHENTICATED


class ResourceExhausted(NatsgwError):
    status = Status.RESOURCE_EXHAUSTED


class FailedPrecondition(NatsgwError):
    """A condition of the request did not hold (KV revision mismatch, unknown ack token ...)."""

    status = Status.FAILED_PRECONDITION


class Unavailable(NatsgwError):
    """The gateway or NATS cannot serve now (no responder, disconnected, shutting down).

    ``sent`` is False when the request surely never left this process (the connection could
    not be made), so even a call that is not idempotent may be repeated.
    """

    status = Status.UNAVAILABLE

    def __init__(self, message: str, status: Status | None = None, *, sent: bool = True) -> None:
        super().__init__(message, status)
        self.sent = sent


class DeadlineExceeded(NatsgwError):
    status = Status.DEADLINE_EXCEEDED


class DataLoss(NatsgwError):
    status = Status.DATA_LOSS


class Cancelled(NatsgwError):
    status = Status.CANCELLED


class Internal(NatsgwError):
    status = Status.INTERNAL


_BY_STATUS: dict[Status, type[NatsgwError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        DataLoss,
        Cancelled,
        Internal,
    )
}


def from_status(status: Status, message: str | None) -> NatsgwError:
    """The typed exception for ``status`` (``NatsgwError`` itself for the rest)."""
    cls = _BY_STATUS.get(status, NatsgwError)
    return cls(message or status.name.lower().replace("_", " "), status)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise grpclib's errors as the typed hierarchy (the original stays as ``__cause__``)."""
    try:
        yield
    except GRPCError as exc:
        raise from_status(exc.status, exc.message) from exc
    except (ConnectionRefusedError, socket.gaierror) as exc:  # before anything was sent
        raise Unavailable(f"connection to the gateway failed: {exc}", sent=False) from exc
    except (StreamTerminatedError, ConnectionError, OSError) as exc:
        raise Unavailable(f"connection to the gateway failed: {exc}") from exc
