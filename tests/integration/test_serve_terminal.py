"""`natsgw serve` typed at a real terminal (a pty) logs for people; through a pipe, JSON."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration._served import free_port


def test_serve_on_a_terminal_logs_console_lines(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NATSGW_", "NATS_"))},
        "NATSGW_DATA_DIR": str(tmp_path / "data"),
        "GRPC_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsgw", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"natsgw_started" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 65536)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;]*m", "", seen.decode(errors="replace"))  # colours off
    assert "natsgw_started" in text, text
    started = next(line for line in text.splitlines() if "natsgw_started" in line)
    assert not started.lstrip().startswith("{"), started  # console rendering, not JSON
    assert "[info" in started
