"""SIGTERM under load: publishes, subscription streams and object uploads in flight.

Nothing acknowledged is lost, each call in flight completes or ends with a gRPC status (never a
dropped connection), and an upload that was cut off leaves no object behind, not even a partial
one. The gateway is a real `natsgw serve` process; what it stored is checked afterwards through
another gateway and a native client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from tests.conftest import free_port, tenant
from tests.integration._jetstream import make_stream, ns_of
from tests.integration.test_cli import NATSGW, listening, run_env
from tests.integration.test_messaging import open_subscription

GRACE = 3.0


@pytest.fixture
def serving(tmp_path: Path, nats_server: EmbeddedNatsServer) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    with (tmp_path / "natsgw.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [*NATSGW, "serve"],
            env=run_env(
                tmp_path,
                GRPC_PORT=str(port),
                NATS_URLS=nats_server.url,
                NATSGW_SHUTDOWN_GRACE=str(GRACE),
                NATSGW_LOG_LEVEL="warning",
            ),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    proc.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while not listening(port):
        assert proc.poll() is None and time.monotonic() < deadline, "natsgw did not start"
        time.sleep(0.05)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@dataclasses.dataclass
class Outcomes:
    #: How each call ended: "OK" or a gRPC status name; anything else is a dropped call.
    calls: Counter[str] = dataclasses.field(default_factory=Counter)
    acked: dict[bytes, int] = dataclasses.field(default_factory=dict)
    uploads: dict[str, str] = dataclasses.field(default_factory=dict)

    def record(self, exc: BaseException | None) -> str:
        if exc is None:
            outcome = "OK"
        elif isinstance(exc, GRPCError):
            outcome = exc.status.name
        else:
            outcome = f"no status: {type(exc).__name__}: {exc}"
        self.calls[outcome] += 1
        return outcome


async def publisher(stub: pb.NatsServiceStub, user: str, name: str, out: Outcomes) -> None:
    """Publish until the gateway says it is shutting down."""
    i = 0
    while True:
        data = f"{name}-{i}".encode()
        i += 1
        try:
            response = await stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=user, stream_name="load", subject="load.x", data=data
                ),
                timeout=20,
            )
        except Exception as exc:
            out.record(exc)
            return
        out.record(None)
        out.acked[data] = response.sequence


async def subscriber(stub: pb.NatsServiceStub, user: str, out: Outcomes) -> None:
    try:
        async with open_subscription(
            stub, pb.SubscribeRequest(user_id=user, subject="events.>")
        ) as stream:
            while await stream.recv_message() is not None:
                pass
            await stream.recv_trailing_metadata()
    except Exception as exc:
        out.record(exc)
    else:
        out.record(None)


async def uploader(
    stub: pb.NatsServiceStub, user: str, name: str, data: bytes, pause: float, out: Outcomes
) -> None:
    async def requests() -> AsyncIterator[pb.ObjectPutStreamRequest]:
        yield pb.ObjectPutStreamRequest(
            header=pb.ObjectPutHeader(user_id=user, bucket="up", object_name=name)
        )
        for start in range(0, len(data), 64 * 1024):
            await asyncio.sleep(pause)
            yield pb.ObjectPutStreamRequest(chunk=data[start : start + 64 * 1024])

    try:
        await stub.object_put_stream(requests(), timeout=60)
    except Exception as exc:
        out.uploads[name] = out.record(exc)
    else:
        out.uploads[name] = out.record(None)


async def test_sigterm_under_load_loses_nothing_and_answers_every_call(
    serving: subprocess.Popen[bytes], stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    port = serving.port  # type: ignore[attr-defined]
    channel = Channel("127.0.0.1", port)
    target = pb.NatsServiceStub(channel)
    user = tenant()
    out = Outcomes()
    content = {f"obj{i}": os.urandom(640 * 1024) for i in range(4)}
    try:
        await make_stream(target, user, "load", ["load.>"])
        tasks = [asyncio.create_task(publisher(target, user, f"p{n}", out)) for n in range(4)] + [
            asyncio.create_task(subscriber(target, user, out)) for _ in range(2)
        ]
        # Uploads: two finish within the grace period, two are still sending when it ends.
        pauses = {"obj0": 0.05, "obj1": 0.1, "obj2": 0.6, "obj3": 0.8}
        tasks += [
            asyncio.create_task(uploader(target, user, name, data, pauses[name], out))
            for name, data in content.items()
        ]
        await asyncio.sleep(1.0)
        assert out.acked, "no publish went through before SIGTERM"
        serving.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), GRACE + 20)
        assert await asyncio.to_thread(serving.wait, 20) == 0
    finally:
        channel.close()
    print(f"\nSIGTERM under load: {dict(out.calls)}; uploads {out.uploads}")

    # Every call in flight ended with a gRPC status; none was simply dropped.
    dropped = [outcome for outcome in out.calls if outcome.startswith("no status")]
    assert not dropped, dropped
    assert out.uploads["obj0"] == "OK"  # short uploads completed within the grace period
    assert out.uploads["obj3"] == Status.UNAVAILABLE.name  # the slow one could not: told so
    # Everything acknowledged is stored, at the sequence the client was given.
    js = nc.jetstream()
    stream = ns_of(user).stream("load")
    for data, seq in out.acked.items():
        assert (await js.get_msg(stream, seq)).data == data
    # Finished uploads are whole; cut-off ones are not visible at all (through another gateway).
    for name, data in content.items():
        got = await stub.object_get(
            pb.ObjectGetRequest(user_id=user, bucket="up", object_name=name)
        )
        if out.uploads[name] == "OK":
            assert got.found and hashlib.sha256(got.data).digest() == hashlib.sha256(data).digest()
        else:
            assert not got.found, f"{name} was cut off but is visible"
    listing = await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="up"))
    visible = {o.name for o in listing.objects}
    assert visible == {n for n, outcome in out.uploads.items() if outcome == "OK"}
