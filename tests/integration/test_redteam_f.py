"""Red team, issue 17 row F again: anonymous connections fill the total connection cap and lock
every new client out, for the idle timeout.

Found at main f7291b4 from outside (``python -m scripts.attack.redteam F-anon-hold-cap``,
gateway subprocess, token mode, default caps): 17 loopback addresses x 250 connections, each
sending ONE Publish without a credential (answered UNAUTHENTICATED) and then nothing: 4,095
held open (the total cap, NATSGW_EDGE_MAX_CONNECTIONS=4096, reached in 9.5 s); a new client
with a valid token was refused ("Connection lost"). A refused request counts as the "first
request" of the handshake timeout, so a connection that never authenticated stays for
NATSGW_EDGE_IDLE_TIMEOUT (300 s) instead of NATSGW_EDGE_HANDSHAKE_TIMEOUT (10 s); the
per-address cap does not help against an attacker with many addresses (an IPv6 /64).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode
from scripts.attack import h2raw
from tests.conftest import GatewayFactory, tenant
from tests.integration.test_authfirst import TOKEN, bearer, tokens_file
from tests.integration.test_edge import edge


async def test_connections_that_never_authenticate_do_not_hold_the_cap(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Before (measured at f7291b4): every anonymous connection still open after the handshake
    timeout, and the client with a valid token refused."""
    gw = await make_gateway(
        auth_mode=AuthMode.TOKEN,
        auth_tokens_file=tokens_file(tmp_path, tenant("legit")),
        **edge(
            edge_max_connections=40,
            edge_max_connections_per_peer=10,
            edge_handshake_timeout=1.0,
            edge_idle_timeout=300.0,
        ),
    )
    body = bytes(pb.PublishRequest(subject="x", data=b"1"))

    def attack() -> list[h2raw.Client]:
        clients = []
        for i in range(40):
            client = h2raw.Client(gw.port, source=f"127.0.0.{2 + i // 10}")
            client.open_request("/isa.nats.NATSService/Publish", body)  # no credential
            client.flush()
            clients.append(client)
        return clients

    clients = await asyncio.to_thread(attack)
    try:
        await asyncio.sleep(2.5)  # past the handshake timeout and a sweep
        for client in clients:
            await asyncio.to_thread(client.drain, 0.01)
        still_open = sum(not c.closed for c in clients)
        channel = Channel("127.0.0.1", gw.port)
        outcome = "OK"
        try:
            await pb.NatsServiceStub(channel).publish(
                pb.PublishRequest(subject="legit", data=b"1"), metadata=bearer(TOKEN), timeout=5
            )
        except (GRPCError, OSError, StreamTerminatedError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        finally:
            channel.close()
    finally:
        for client in clients:
            client.close()
    print(f"\nanonymous connections still open {still_open}/40; a client with a token: {outcome}")
    assert outcome == "OK", f"a client with a valid token was locked out: {outcome}"
    assert still_open == 0, f"{still_open} connections that never authenticated still held"
