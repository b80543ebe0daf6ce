"""File descriptors: the soft fd limit raised at start, accept errors logged rate-limited."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import structlog

log = structlog.get_logger("natsgw.edge")

#: What asyncio's accept loop reports (then it stops accepting for ACCEPT_RETRY_DELAY, 1 s).
_ACCEPT_MESSAGE = "socket.accept() out of system resource"


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) afterwards.

    Why: a default soft limit of 1024 let 1,100 idle connections stop new clients, NATS
    reconnects and /readyz (row F); the hard limit is what the operator allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft != hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft, hard


class AcceptErrorLog:
    """The loop's exception handler, with accept errors (EMFILE, ENFILE, ENOBUFS ...) logged at
    most once per ``interval`` seconds, with how many were not logged; everything else goes to
    the handler that was there before.

    Why: asyncio logs each failed accept with a traceback (row F: 186 MB of log in 40 s with
    the fd limit reached). asyncio itself stops accepting for a second after one, so the
    listener does not spin; this only keeps the log readable.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 10.0) -> None:
        self._loop = loop
        self._interval = interval
        self._previous = loop.get_exception_handler()
        self._next_at = 0.0
        self.suppressed = 0
        self.seen = 0

    def install(self) -> None:
        self._loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        if self._loop.get_exception_handler() == self._handle:
            self._loop.set_exception_handler(self._previous)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith(_ACCEPT_MESSAGE):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.seen += 1
        now = time.monotonic()
        if now < self._next_at:
            self.suppressed += 1
            return
        self._next_at = now + self._interval
        exc = context.get("exception")
        log.error(
            "accept_failed",
            error=f"{type(exc).__name__}: {exc}" if exc is not None else "",
            not_logged_since_last=self.suppressed,
            detail="out of file descriptors or memory: new connections wait (accepting pauses "
            "1 s at a time); raise the fd limit or lower NATSGW_EDGE_MAX_CONNECTIONS",
        )
        self.suppressed = 0
