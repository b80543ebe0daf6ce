"""Undecodable requests are logged, but a client sending garbage in a loop cannot flood the log.

The codec (:mod:`natsgw.wire.codec`) refuses the bytes with INVALID_ARGUMENT; the call pipeline,
which knows the peer, reports each refusal here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("natsgw.wire")


class RejectLog:
    """Logs undecodable requests at most once per peer host and ``interval`` (no traceback).

    A client sending garbage in a loop costs one log line a minute, not one per call.
    """

    def __init__(
        self,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = 10_000,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._max_peers = max_peers
        self._seen: dict[str, list[float]] = {}  # host -> [last logged at, suppressed since]

    def __call__(self, message_type: str, peer: str) -> None:
        host = _host(peer)
        now = self._clock()
        seen = self._seen.get(host)
        if seen is not None and now - seen[0] < self._interval:
            seen[1] += 1
            return
        if len(self._seen) >= self._max_peers:
            self._seen.clear()
        self._seen[host] = [now, 0]
        log.warning(
            "request_undecodable",
            peer=host,
            message_type=message_type,
            suppressed=int(seen[1]) if seen is not None else 0,
            interval=self._interval,
        )


def _host(peer: str) -> str:
    """``"1.2.3.4:5678"`` -> ``"1.2.3.4"``, ``"[::1]:5678"`` -> ``"[::1]"``: one key per host."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer
