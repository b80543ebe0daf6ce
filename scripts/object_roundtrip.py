"""Put and get one large object through a running gateway with the streaming RPCs.

Starts ``natsgw serve`` as a subprocess (with its embedded nats-server unless ``--nats-url`` is
given), streams an object of ``--size`` MiB in with ObjectPutStream (its SHA-256 in the header),
streams it back out with ObjectGetStream (checking the SHA-256 again on the client), and prints
the throughput of each direction and the gateway process's peak resident memory (``VmHWM`` from
``/proc/<pid>/status``; the embedded nats-server is a separate process and not counted).

    python scripts/object_roundtrip.py --size 256
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _gateway import running_gateway  # scripts/ is on sys.path when a script runs
from grpclib.client import Channel

from natsgw._generated.isa import nats as pb

MIB = 1024 * 1024


def content(size: int, piece: int, seed: bytes) -> Iterator[bytes]:
    """Deterministic, incompressible-looking content, generated piece by piece."""
    block = hashlib.shake_256(seed).digest(piece)
    sent = 0
    index = 0
    while sent < size:
        n = min(piece, size - sent)
        # Vary every piece so no two chunks are equal.
        yield index.to_bytes(8, "big") + block[8:n] if n > 8 else block[:n]
        sent += n
        index += 1


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def wait_ready(stub: pb.NatsServiceStub, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await stub.health_check(pb.NatsHealthCheckRequest(), timeout=2)
            if reply.healthy:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not become healthy in time")
        await asyncio.sleep(0.2)


async def roundtrip(args: argparse.Namespace, port: int, pid: int) -> int:
    size = args.size * MIB
    piece = args.piece * 1024
    seed = os.urandom(16)
    expected = hashlib.sha256()
    for part in content(size, piece, seed):
        expected.update(part)
    sha_hex = expected.hexdigest()

    channel = Channel("127.0.0.1", port)
    stub = pb.NatsServiceStub(channel)
    try:
        await wait_ready(stub)
        idle = proc_status(pid)
        user = args.user
        name = f"roundtrip-{args.size}MiB.bin"

        def requests() -> Iterator[pb.ObjectPutStreamRequest]:
            header = pb.ObjectPutHeader(
                user_id=user,
                bucket=args.bucket,
                object_name=name,
                metadata={"purpose": "object_roundtrip"},
                sha256=sha_hex,
            )
            yield pb.ObjectPutStreamRequest(header=header)
            for part in content(size, piece, seed):
                yield pb.ObjectPutStreamRequest(chunk=part)

        start = time.perf_counter()
        put = await stub.object_put_stream(requests())
        put_seconds = time.perf_counter() - start
        assert put.info is not None
        if put.info.size != size:
            raise SystemExit(f"stored {put.info.size} bytes, sent {size}")
        after_put = proc_status(pid)

        got = hashlib.sha256()
        received = 0
        messages = 0
        start = time.perf_counter()
        async for message in stub.object_get_stream(
            pb.ObjectGetRequest(user_id=user, bucket=args.bucket, object_name=name)
        ):
            if messages == 0 and not message.found:
                raise SystemExit("the object was not found")
            got.update(message.chunk)
            received += len(message.chunk)
            messages += 1
        get_seconds = time.perf_counter() - start
        after_get = proc_status(pid)
        ok = received == size and got.hexdigest() == sha_hex

        await stub.object_delete(
            pb.ObjectDeleteRequest(user_id=user, bucket=args.bucket, object_name=name)
        )
    finally:
        channel.close()

    print(f"object:          {args.size} MiB ({size} bytes), sent in {piece // 1024} KiB messages")
    print(f"NATS digest:     {put.info.digest}")
    print(f"put (stream):    {put_seconds:.2f} s  {size / MIB / put_seconds:.1f} MiB/s")
    print(
        f"get (stream):    {get_seconds:.2f} s  {size / MIB / get_seconds:.1f} MiB/s "
        f"({messages - 1} chunk messages)"
    )
    print(f"sha256 end to end: {'OK' if ok else 'MISMATCH'} ({sha_hex})")
    print(
        f"gateway RSS:     idle {idle['VmRSS'] / 1024:.1f} MiB, after put "
        f"{after_put['VmRSS'] / 1024:.1f} MiB, after get {after_get['VmRSS'] / 1024:.1f} MiB"
    )
    print(
        f"gateway peak RSS (VmHWM): {after_get['VmHWM'] / 1024:.1f} MiB "
        f"(idle peak {idle['VmHWM'] / 1024:.1f} MiB)"
    )
    return 0 if ok else 1


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="object size in MiB")
    parser.add_argument("--piece", type=int, default=256, help="client message size in KiB")
    parser.add_argument("--nats-url", default="", help="use this nats-server, not an embedded one")
    parser.add_argument("--bucket", default="roundtrip")
    parser.add_argument("--user", default="roundtrip-user")
    args = parser.parse_args()

    async with running_gateway(args.nats_url, "natsgw-roundtrip-") as (port, proc):
        return await roundtrip(args, port, proc.pid)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
