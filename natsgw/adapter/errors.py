"""nats-py's exceptions, translated once into the gateway's vocabulary (see natsgw.errors)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from grpclib.const import Status
from nats import errors as nats_errors

from natsgw.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


class ApiError(Exception):
    """A JetStream API answer ``{"error": {"code", "err_code", "description"}}``, as received.

    Only :func:`translated` looks inside it: everything above the adapter sees GatewayErrors.
    """

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description

    @classmethod
    def of(cls, error: Mapping[str, Any]) -> ApiError:
        return cls(
            int(error.get("code") or 0),
            int(error.get("err_code") or 0),
            str(error.get("description") or ""),
        )


class NoStream(NotFound):
    """Nothing stores messages published on that subject: its stream (or bucket) is missing."""


class WrongLastSequence(FailedPrecondition):
    """A stream publish's ``Nats-Expected-Last-*`` header did not match: nothing was stored."""


_UNAVAILABLE = (
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionDrainingError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.NoServersError,
    ConnectionError,
    OSError,
)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run a nats-py call; re-raise whatever it throws as a GatewayError about ``what``."""
    try:
        yield
    except GatewayError:
        raise
    except ApiError as exc:
        raise _from_api_error(what, exc) from exc
    except nats_errors.NoRespondersError as exc:
        raise Unavailable(f"{what}: no responder is listening (nothing subscribed)") from exc
    except (TimeoutError, nats_errors.TimeoutError) as exc:
        raise DeadlineExceeded(f"{what}: NATS did not answer in time") from exc
    except nats_errors.MaxPayloadError as exc:
        raise ResourceExhausted(f"{what}: payload exceeds the NATS server's max_payload") from exc
    except (nats_errors.BadSubjectError, nats_errors.BadHeaderError) as exc:
        raise InvalidArgument(what, f"NATS refused it ({type(exc).__name__})") from exc
    except _UNAVAILABLE as exc:
        raise Unavailable(
            f"{what}: NATS is not reachable right now ({type(exc).__name__})"
        ) from exc
    except nats_errors.Error as exc:
        raise Internal(f"{what}: NATS error {type(exc).__name__}: {exc}") from exc


def as_gateway_error(what: str, exc: Exception) -> GatewayError:
    """``exc`` as the GatewayError :func:`translated` raises for it (for loops that report an
    error per item instead of raising)."""
    try:
        with translated(what):
            raise exc
    except GatewayError as error:
        return error
    raise AssertionError("translated() re-raises everything")  # pragma: no cover


def _from_api_error(what: str, exc: ApiError) -> GatewayError:
    """JetStream API errors carry NATS's own code and reason; keep the reason for the client."""
    reason = exc.description or "JetStream refused the request"
    code = exc.code
    if code == 404:
        return NotFound(f"{what}: {exc.description or 'not found'}")
    if "exceeded" in reason and "maximum" in reason:
        # "maximum bytes/messages exceeded": a full stream or bucket answers 503, but retrying
        # will not help until something is deleted.
        return ResourceExhausted(f"{what}: {reason}")
    if code == 503:
        return Unavailable(f"{what}: {reason}")
    if code == 400 and ("already in use" in reason or "already exists" in reason):
        return AlreadyExists(f"{what}: {reason}")
    if code in (400, 500) and ("maximum" in reason or "resources" in reason or "limit" in reason):
        return ResourceExhausted(f"{what}: {reason}")
    return InvalidArgument(what, reason)


class DataLoss(GatewayError):
    """Stored or received content does not match its digest: nothing was stored or delivered."""

    status = Status.DATA_LOSS
