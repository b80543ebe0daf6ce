"""`natsgw serve` as a user starts it (embedded nats-server default), for tools run against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Served:
    port: int
    env: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def serving(directory: Path, **env: str) -> Iterator[Served]:
    """Run `natsgw serve` on a free port until the block ends (stopped with SIGTERM)."""
    port = free_port()
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NATSGW_", "NATS_", "GRPC_"))},
        "NATSGW_DATA_DIR": str(directory / "data"),
        "GRPC_PORT": str(port),
        **env,
    }
    log_path = directory / "natsgw.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "natsgw", "serve"],
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while not any(
            json.loads(line).get("event") == "natsgw_started"
            for line in log_path.read_text().splitlines()
            if line.startswith("{")
        ):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "natsgw did not start in 30 s"
            time.sleep(0.05)
        yield Served(port, run_env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
