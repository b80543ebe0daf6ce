"""The gateway's error vocabulary and its single mapping onto gRPC status.

Domain code (tenancy, adapter, handlers) raises these; only :func:`to_grpc_error` turns them into
what a client sees, so a status code means the same thing on every RPC.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw.ops.secrets import mask_text

#: Most characters of a caller's value an error text or log line quotes.
EXCERPT = 48
#: Longest error text a caller receives.
MAX_TEXT = 1024
#: Quoted values (``'...'`` or ``"..."`` opening after a non-word character, or cut off by the
#: end) longer than :data:`EXCERPT`; an apostrophe inside a word opens none.
_LONG_QUOTED = re.compile(rf"(?<![\w'\"])(['\"])([^'\"\n]{{{EXCERPT + 1},}})(?:\1|\Z)")


def excerpt(value: str, limit: int = EXCERPT) -> str:
    """``value`` quoted for an error text or a log line: whole when short, else a short prefix
    and its length (a 10 MiB name costs ~80 characters, not 10 MiB in every copy of the text).

    The one helper every message that echoes a caller's value goes through.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def bounded_text(text: str) -> str:
    """``text`` with every long quoted value cut to an :func:`excerpt` and the whole at most
    :data:`MAX_TEXT` characters: the backstop, in :func:`to_grpc_error`, for messages composed
    anywhere (nats-server's, nats-py's, a handler's) that quote a caller's value whole."""
    if len(text) <= EXCERPT:
        return text
    if len(text) > 8 * MAX_TEXT:  # a huge value quoted whole: no regex over megabytes
        text = text[: 8 * MAX_TEXT]
    text = _LONG_QUOTED.sub(lambda m: excerpt(m.group(2)), text)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 12] + "… (cut off)"
    return text


class GatewayError(Exception):
    """Base of every error the gateway reports on purpose; carries its gRPC status."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GatewayError):
    """The request names something malformed; the message names the field."""

    status = Status.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class NotFound(GatewayError):
    status = Status.NOT_FOUND


class AlreadyExists(GatewayError):
    status = Status.ALREADY_EXISTS


class FailedPrecondition(GatewayError):
    status = Status.FAILED_PRECONDITION


class Unauthenticated(GatewayError):
    status = Status.UNAUTHENTICATED


class PermissionDenied(GatewayError):
    status = Status.PERMISSION_DENIED


class ResourceExhausted(GatewayError):
    """A size, buffer or quota limit was hit; the message names the limit."""

    status = Status.RESOURCE_EXHAUSTED


class Unavailable(GatewayError):
    """NATS (or a responder) cannot be reached now; retrying later may succeed."""

    status = Status.UNAVAILABLE


class DeadlineExceeded(GatewayError):
    status = Status.DEADLINE_EXCEEDED


class Internal(GatewayError):
    status = Status.INTERNAL


class UndecodableRequest(GRPCError):
    """Request bytes that do not parse as the RPC's message: the client's fault, no traceback.

    A GRPCError itself, because it is raised while grpclib decodes, also for services (health,
    reflection) that no pipeline of ours maps.
    """

    def __init__(self, message_type: str) -> None:
        super().__init__(Status.INVALID_ARGUMENT, f"request is not a valid {message_type}")
        self.message_type = message_type


def _same(text: str) -> str:
    return text


def to_grpc_error(exc: BaseException, public: Callable[[str], str] = _same) -> GRPCError:
    """Translate any exception escaping a handler into the status a client receives.

    Its text is bounded first (:func:`bounded_text`: no caller's value echoed beyond a short
    prefix), then masked twice: secrets out (URL passwords and tokens,
    :mod:`natsgw.ops.secrets`), then ``public`` rewrites it into what the caller may read (the
    call pipeline passes the tenancy layer's rewriting of NATS names, see
    :func:`natsgw.tenancy.public_text`).
    """
    if isinstance(exc, GRPCError):
        if exc.message:
            text = public(mask_text(bounded_text(exc.message)))
            if text != exc.message:
                return GRPCError(exc.status, text, exc.details)
        return exc
    if isinstance(exc, GatewayError):
        return GRPCError(exc.status, public(mask_text(bounded_text(exc.message))))
    if isinstance(exc, TimeoutError):
        return GRPCError(Status.DEADLINE_EXCEEDED, "the operation timed out")
    return GRPCError(Status.INTERNAL, f"internal error ({type(exc).__name__}); see gateway logs")
