"""Red team, issue 17 row C (item 3) again: a tenant WITH a valid token still makes the gateway
hold ~10 MiB per unfinished request, with no budget per connection or per tenant.

Found at main 0fa715b from outside (``python -m scripts.attack.redteam C-token-2x50``, gateway
subprocess, token mode): 2 connections x 50 streams, each authenticated, declaring a 10 MiB
Publish and sending all of it but the last 64 KiB: gateway RSS 55 -> 1,169 MiB within the
10 s read timeout (10 connections x 100 streams: 56 -> 1,318 MiB, 534 MiB still held after
every stream was answered DEADLINE_EXCEEDED; the bystander's worst call 1.0 s). Anonymous
streams are refused before their body is read (test_authfirst.py); the read timeout bounds how
long, not how much, so one tenant repeating this every 10 s keeps the gateway at > 1 GiB (and
with more connections, out of memory for every tenant).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from natsgw.config import AuthMode
from natsgw.server import Gateway
from tests.conftest import GatewayFactory, tenant
from tests.integration._raw_h2 import RawH2, grpc_prefix
from tests.integration.test_authfirst import PUBLISH, TOKEN, Bystander, bearer, rss_mib, tokens_file

KIB, MIB = 1024, 1024 * 1024


@pytest.fixture
async def token_gateway(make_gateway: GatewayFactory, tmp_path: Path) -> Gateway:
    return await make_gateway(
        auth_mode=AuthMode.TOKEN,
        auth_tokens_file=tokens_file(tmp_path, tenant("tenant")),
        request_read_timeout=4.0,
    )


async def test_one_tenants_unfinished_requests_have_a_memory_budget(
    token_gateway: Gateway,
) -> None:
    """Before (measured at 0fa715b in-process and as a subprocess): +1.1 GiB held by 100
    authenticated unfinished 10 MiB requests on 2 connections."""
    bystander = Bystander(token_gateway.port, bearer(TOKEN))
    await bystander.start()
    base = rss_mib()
    peak = 0.0
    conns = [await RawH2.open(token_gateway.port) for _ in range(2)]
    metadata = list(bearer(TOKEN).items())
    try:
        for conn in conns:
            for _ in range(50):
                conn.start(PUBLISH, metadata, grpc_prefix(10 * MIB), 10 * MIB - 64 * KIB)
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.5  # within the read timeout: what the tenant holds at once
        while loop.time() < end:
            peak = max(peak, rss_mib() - base)
            await asyncio.sleep(0.1)
    finally:
        for conn in conns:
            await conn.close()
    worst = await bystander.stop()
    print(f"\nC authenticated: RSS +{peak:.0f} MiB peak, bystander worst {worst * 1000:.0f} ms")
    assert peak < 400, f"one tenant's 100 unfinished requests pinned {peak:.0f} MiB"
    assert worst < 2.0
