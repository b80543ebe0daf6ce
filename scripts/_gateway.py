"""Shared by the measurement scripts: run `natsgw serve` as a child process for a while."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running_gateway(
    nats_url: str = "", prefix: str = "natsgw-script-"
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """`natsgw serve` on a free port (embedded nats-server unless ``nats_url``); yields
    (port, process) and stops it with SIGTERM afterwards."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ)
    env.update(
        GRPC_HOST="127.0.0.1",
        GRPC_PORT=str(port),
        NATSGW_DATA_DIR=str(data_dir),
        NATSGW_LOG_LEVEL=os.environ.get("NATSGW_LOG_LEVEL", "warning"),
        NATSGW_LOG_FORMAT="console",
    )
    if nats_url:
        env["NATS_URLS"] = nats_url
    else:
        env.pop("NATS_URLS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "natsgw", "serve", env=env, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
