"""Issue 17 row C, authenticated: a tenant with a valid token cannot make the gateway assemble
more large request bodies at once than its budget (NATSGW_REQUEST_BUFFER_BYTES in total,
NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION per connection, natsgw.wire.budget).

The attacker speaks raw HTTP/2 (tests/integration/_raw_h2.py) to the in-process gateway: 2
connections x 50 streams, each announcing a 10 MiB request and sending all of it but the last
64 KiB. Memory is this process's RSS, asserted with a generous bound (figures printed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode
from tests.conftest import GatewayFactory, tenant, wait_for
from tests.integration._raw_h2 import RawH2, grpc_prefix

KIB, MIB = 1024, 1024 * 1024
PUBLISH = "/isa.nats.NATSService/Publish"
ATTACKER = "reqbudget-attacker-" + "a" * 24
QUIET = "reqbudget-quiet-" + "q" * 24
READ_TIMEOUT = 2.5


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens.json"
    entries = [
        {"token_sha256": hashlib.sha256(token.encode()).hexdigest(), "user_id": tenant(name)}
        for token, name in ((ATTACKER, "rb-attacker"), (QUIET, "rb-quiet"))
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


async def test_an_authenticated_tenant_cannot_hold_more_than_the_request_budget(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Before: all 100 bodies were read as they came until the read timeout (RSS +468-544 MiB in
    2.5 s here; +1.1 GiB in the attack script). Now: at most 4 x 10 MiB per connection are
    assembled, the other streams are refused RESOURCE_EXHAUSTED before their body is read (or,
    never let to send, time out), and a quiet tenant's 1 MiB publish and KVGet keep working."""
    gateway = await make_gateway(
        auth_mode=AuthMode.TOKEN,
        auth_tokens_file=tokens_file(tmp_path),
        request_read_timeout=READ_TIMEOUT,
    )
    quiet = Channel("127.0.0.1", gateway.port)
    stub = pb.NatsServiceStub(quiet)
    auth = {"authorization": f"Bearer {QUIET}"}
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(bucket="quiet"), metadata=auth)
    await stub.kv_put(pb.KvPutRequest(bucket="quiet", key="k", value=b"v"), metadata=auth)
    payload = b"p" * MIB
    latencies: list[float] = []

    async def quiet_calls() -> None:
        started = time.perf_counter()
        reply = await stub.publish(
            pb.PublishRequest(subject="quiet", data=payload), metadata=auth, timeout=10
        )
        assert reply.success
        entry = await stub.kv_get(pb.KvGetRequest(bucket="quiet", key="k"), metadata=auth)
        assert entry.value == b"v"
        latencies.append(time.perf_counter() - started)

    await quiet_calls()  # connected and warm before anything is measured
    latencies.clear()
    base = peak = rss_mib()
    conns = [await RawH2.open(gateway.port) for _ in range(2)]
    metadata = [("authorization", f"Bearer {ATTACKER}")]
    try:
        started = time.monotonic()
        for conn in conns:
            for _ in range(50):
                conn.start(PUBLISH, metadata, grpc_prefix(10 * MIB), 10 * MIB - 64 * KIB)
        while sum(c.answered() for c in conns) < 100:
            assert time.monotonic() - started < READ_TIMEOUT + 15, "the attacker was not answered"
            await quiet_calls()
            peak = max(peak, rss_mib())
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
    finally:
        for conn in conns:
            await conn.close()
        quiet.close()
    grown = peak - base
    statuses = Counter(s for c in conns for s in c.statuses.values())
    refused = [
        m
        for c in conns
        for sid, m in c.messages.items()
        if c.statuses[sid] == str(Status.RESOURCE_EXHAUSTED.value)
    ]
    worst = max(latencies)
    print(
        f"\nC stalled, valid token, 2 x 50 streams: RSS peak +{grown:.0f} MiB, answered in "
        f"{took:.1f} s, statuses {dict(statuses)}; quiet tenant {len(latencies)} rounds "
        f"(1 MiB publish + KVGet), worst {worst * 1000:.0f} ms"
    )
    assert grown < 300, f"the attacker made the gateway hold {grown:.0f} MiB"
    # Per connection, 4 bodies are assembled; a 5th stream whose prefix got through is refused
    # after a brief wait; the rest never get a window to send in and end at the read timeout.
    assert refused, f"no stream was refused: {dict(statuses)}"
    assert all("NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION=" in m for m in refused)
    assert set(statuses) <= {
        str(Status.RESOURCE_EXHAUSTED.value),
        str(Status.DEADLINE_EXCEEDED.value),
    }
    assert latencies, "the quiet tenant never got a call through"
    assert worst < 3.0, f"the quiet tenant waited {worst:.1f} s"


async def test_many_connections_share_one_total_budget(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """5 connections x 2 stalled 10 MiB bodies against a total of 3 messages and a share of one
    per connection: 3 are assembled, the rest refused naming the variable that refused them."""
    largest = 10 * MIB + 64 * KIB
    gateway = await make_gateway(
        auth_mode=AuthMode.TOKEN,
        auth_tokens_file=tokens_file(tmp_path),
        request_read_timeout=READ_TIMEOUT,
        request_buffer_bytes=3 * largest,
        request_buffer_bytes_per_connection=largest,
    )
    conns = [await RawH2.open(gateway.port) for _ in range(5)]
    metadata = [("authorization", f"Bearer {ATTACKER}")]
    try:
        for conn in conns:
            for _ in range(2):
                conn.start(PUBLISH, metadata, grpc_prefix(10 * MIB), 10 * MIB - 64 * KIB)
        await wait_for(lambda: sum(c.answered() for c in conns) == 10, timeout=READ_TIMEOUT + 15)
    finally:
        for conn in conns:
            await conn.close()
    answers = [(c.statuses[s], c.messages[s]) for c in conns for s in c.statuses]
    timed_out = [m for s, m in answers if s == str(Status.DEADLINE_EXCEEDED.value)]
    refused = [m for s, m in answers if s == str(Status.RESOURCE_EXHAUSTED.value)]
    named = Counter(m.split("(", 1)[1].split("=", 1)[0] for m in refused if "(" in m)
    print(f"\nC stalled, 5 x 2 streams, room for 3: {len(timed_out)} assembled, refused {named}")
    assert len(timed_out) <= 3 and len(timed_out) + len(refused) == 10
    assert any(f"NATSGW_REQUEST_BUFFER_BYTES={3 * largest}" in m for m in refused)
    assert any(f"NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION={largest}" in m for m in refused)
