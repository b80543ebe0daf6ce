"""Listening sockets bound before a server starts, so the bound port is known without asking it."""

from __future__ import annotations

import socket


def bind_tcp(
    host: str, port: int, *, backlog: int = 100, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), as asyncio would bind it.

    One socket, so one address: when ``host`` resolves to several (``localhost``) the IPv4 one is
    preferred, as most clients try it first; an empty host means all IPv4 interfaces. IPv6
    sockets are IPv6-only and addresses reusable, as ``loop.create_server`` makes them.
    ``reuse_port``: several processes listen on the port and the kernel spreads connections
    among them (natsgw.ops.workers); ``listen=False`` only holds the port for them.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])
