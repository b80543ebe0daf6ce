"""Caps on open connections, in total and per peer address."""

from __future__ import annotations


class ConnectionLimits:
    """Counts open connections per peer address; refuses beyond the caps (0: no cap).

    Why per address and in total: one client must not be able to use every file descriptor
    (row F: 1,100 idle connections blocked everyone), and the total keeps the process below its
    fd limit whatever the number of clients.
    """

    __slots__ = ("_by_peer", "open", "per_peer", "total")

    def __init__(self, total: int, per_peer: int) -> None:
        self.total = total
        self.per_peer = per_peer
        self.open = 0
        self._by_peer: dict[str, int] = {}

    def admit(self, peer: str) -> str | None:
        """Count a new connection from ``peer``; None if admitted, else why it is refused."""
        if self.total and self.open >= self.total:
            return "too many connections to this gateway"
        held = self._by_peer.get(peer, 0)
        if self.per_peer and held >= self.per_peer:
            return "too many connections from this address"
        self._by_peer[peer] = held + 1
        self.open += 1
        return None

    def release(self, peer: str) -> None:
        """An admitted connection from ``peer`` closed."""
        held = self._by_peer.get(peer, 0)
        if held <= 1:
            self._by_peer.pop(peer, None)
        else:
            self._by_peer[peer] = held - 1
        self.open = max(0, self.open - 1)

    def from_peer(self, peer: str) -> int:
        return self._by_peer.get(peer, 0)


def peer_key(peername: object) -> str:
    """The address part of a transport's ``peername`` (the port is per connection)."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return str(peername or "")
