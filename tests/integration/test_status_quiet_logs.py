"""A default start and clients that hang up mid-stream leave no warning or error on stderr.

Operators learn to ignore a log that warns on every start and prints a line per disconnect; the
happy path must be quiet so that a warning means something.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from tests.conftest import tenant
from tests.integration._served import serving

#: A client process that subscribes, says so once a message arrived, and waits to be killed.
_CLIENT = """
import asyncio, sys
from grpclib.client import Channel
from natsgw._generated.isa import nats as pb

async def main() -> None:
    channel = Channel("127.0.0.1", int(sys.argv[1]))
    stub = pb.NatsServiceStub(channel)
    async for _ in stub.subscribe(pb.SubscribeRequest(user_id=sys.argv[2], subject="noise")):
        print("got", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _publish_until(stub: pb.NatsServiceStub, user: str, done: asyncio.Future[Any]) -> None:
    """Publish on ``noise`` until ``done`` (the subscription may not exist yet at first)."""
    while not done.done():
        await stub.publish(pb.PublishRequest(user_id=user, subject="noise", data=b"x"))
        await asyncio.wait([done], timeout=0.05)


async def _cancel_mid_stream(stub: pb.NatsServiceStub, user: str) -> None:
    """Subscribe, receive one message, then cancel the call (the client sends RST_STREAM)."""
    replies = aiter(stub.subscribe(pb.SubscribeRequest(user_id=user, subject="noise")))
    first = asyncio.ensure_future(anext(replies))
    await asyncio.wait_for(_publish_until(stub, user, first), 10)
    assert (await first).data == b"x"
    await replies.aclose()  # type: ignore[attr-defined]


async def _killed_mid_stream(port: int, stub: pb.NatsServiceStub, user: str) -> None:
    """A client process that subscribed and received, then killed (its connection just ends)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, str(port), user, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = asyncio.ensure_future(proc.stdout.readline())
    try:
        await asyncio.wait_for(_publish_until(stub, user, line), 20)
        assert (await line).strip() == b"got"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


def _loud(log: str) -> list[str]:
    """Lines at warning level or above, and grpclib's per-cancellation lines."""
    loud = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            loud.append(line)  # not a structured event: a traceback or a library's print
            continue
        text = str(event.get("event", ""))
        if event.get("level") in ("warning", "error", "critical") or "cancelled" in text:
            loud.append(line)
    return loud


async def test_default_start_and_disconnects_log_no_warnings(tmp_path: Path) -> None:
    user = tenant()
    with serving(tmp_path) as served:
        channel = Channel("127.0.0.1", served.port)
        stub = pb.NatsServiceStub(channel)
        try:
            await _cancel_mid_stream(stub, user)
            await _killed_mid_stream(served.port, stub, user)
            health = await stub.health_check(pb.NatsHealthCheckRequest())  # still serving
            assert health.healthy
        finally:
            channel.close()
        log_path = tmp_path / "natsgw.log"
    log = log_path.read_text()
    assert '"natsgw_started"' in log
    assert '"natsgw_stopped"' in log  # the whole life, shutdown included
    assert _loud(log) == []
