"""``NATSGW_WORKERS=N``: N serving processes on one gRPC port, supervised by the process started.

One Python process serves on one core. With N > 1 ``natsgw serve`` becomes a supervisor that
serves nothing itself::

    supervisor: [embedded nats-server] -> hold the gRPC port -> N workers -> [HTTP side, Consul]
    worker i:   ``python -m natsgw.ops.workers`` = an ordinary Gateway, listening with SO_REUSEPORT
    stop:       Consul off -> SIGTERM every worker (each drains as a single gateway does)
                -> HTTP side off -> embedded nats-server last

What the workers share, and how:

- the port: the supervisor binds it (SO_REUSEPORT, not listening: it takes no connections) and
  keeps it while workers come and go; each worker listens on it with SO_REUSEPORT, and the kernel
  spreads *connections* (not calls) over the listeners. One client connection = one worker.
- NATS: the embedded nats-server (started here when NATS_URLS is empty) is handed to every worker
  as NATS_URLS, so workers are plain gateways in front of one server; JetStream state, and so the
  quotas that count it, is shared by construction.
- the ack-token secret: NATSGW_ACK_TOKEN_SECRET, or a random one drawn here, goes to each worker
  through a pipe (never the environment or a log), so a token issued by one worker verifies on
  every other. The embedded nats-server's credentials travel the same pipe.

Supervision (one worker an attacker can crash must not become a full outage):

- a worker that dies is restarted in its slot after a jittered backoff that grows with the
  slot's deaths in a row (``_RESTART``: ceilings 1, 2, 4, 8, 16, then 30 s), each death
  counted when the worker lived less than ``_STABLE`` seconds;
- after ``_MAX_FAILURES`` such deaths in a row the slot is *crash-looping*: logged
  (``worker_crash_looping``), shown on the side port (/healthz, /readyz, ``natsgw_worker_*``
  gauges), and still restarted with backoff, while the other workers keep serving. A worker
  that then lives ``_STABLE`` seconds clears it (``worker_recovered``);
- the gateway gives up (exit status 1) only when no worker can serve: every slot is
  crash-looping at once and none serves at that moment. A worker that cannot start at all
  before any worker ever served (a configuration error, status 2) stops the gateway with
  status 2, as a single gateway does; an embedded nats-server that keeps failing stops it
  with status 1.

Workers run in their own session (a terminal's Ctrl-C reaches the supervisor only, which
forwards SIGTERM) and die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import Mapping

import structlog

from natsgw.backoff import Backoff
from natsgw.config import ConfigError, SecretStr, Settings
from natsgw.ops.consul import ConsulRegistration
from natsgw.ops.datadir import DataDirInUse, DataDirLock
from natsgw.ops.embedded import EmbeddedNatsServer, EmbeddedServerError
from natsgw.ops.sockets import bind_tcp, bound_port
from natsgw.ops.workers_http import WorkersHttp

log = structlog.get_logger("natsgw.ops.workers")

#: Environment of a worker: its index, the supervisor's pid, and the two pipe ends it inherits.
ENV_INDEX = "NATSGW_WORKER_INDEX"
ENV_PARENT = "NATSGW_WORKER_PARENT"
ENV_SECRET_FD = "NATSGW_WORKER_SECRET_FD"
ENV_STATUS_FD = "NATSGW_WORKER_STATUS_FD"

_RESTART = Backoff(base=0.5, cap=30.0)
#: A worker that lived this long starts its slot's failure count afresh.
_STABLE = 30.0
#: Deaths in a row, each within _STABLE of its start, after which a slot is crash-looping.
_MAX_FAILURES = 5
#: Beyond NATSGW_SHUTDOWN_GRACE: how long a worker may take to close NATS and exit.
_EXIT_MARGIN = 10.0
_CONFIG_ERROR = 2
_PR_SET_PDEATHSIG = 1


class SupervisorError(RuntimeError):
    """The supervisor cannot start (the port is taken, ...); the message says why."""


@dataclasses.dataclass
class Worker:
    """One worker slot: the process currently in it and what it reported once serving."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    http_port: int = 0
    restarts: int = 0
    serving: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Deaths in a row, each within _STABLE seconds of the worker's start.
    failures: int = 0
    #: How the last worker in this slot ended ("" before any died).
    last_exit: str = ""
    #: A worker in this slot served at least once.
    served_once: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def crash_looping(self) -> bool:
        return self.failures >= _MAX_FAILURES

    @property
    def unhealthy(self) -> str:
        """Why this slot is unhealthy, for the side port; empty when it is not."""
        if not self.crash_looping:
            return ""
        return (
            f"crash-looping: died {self.failures} times in a row within {_STABLE:g} s of "
            f"starting (last: {self.last_exit}); restarted with backoff"
        )


class Supervisor:
    """Owns the embedded nats-server, the held port and the worker processes."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.embedded: EmbeddedNatsServer | None = None
        self.lock: DataDirLock | None = None
        self.port = 0
        #: Why the gateway stopped serving on its own (empty after a requested stop).
        self.failure = ""
        self._status = 0
        self._secret = settings.ack_token_secret or secrets.token_urlsafe(32)
        self._hold: socket.socket | None = None
        self._nats_env: dict[str, str] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop = asyncio.Event()
        #: Set whenever a slot starts or stops serving or starts crash-looping.
        self._changed = asyncio.Event()
        self._nats_secret: dict[str, str] = {}
        #: Every slot has served once or is crash-looping: the gateway has started.
        self.announced = False
        self._loop = asyncio.get_running_loop()
        self.http: WorkersHttp | None = None
        self._consul: ConsulRegistration | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def _give_up(self, reason: str, status: int = 1) -> None:
        if not self.failure:
            self.failure, self._status = reason, status
        self._stop.set()

    async def start(self) -> None:
        settings = self.settings
        if settings.embedded:  # as natsgw.server does for a single gateway
            self.lock = DataDirLock(settings.data_dir)
            self.lock.acquire()
            self.embedded = EmbeddedNatsServer.owning(settings, self.lock, self._give_up)
            await self.embedded.start()
            self._nats_env["NATS_URLS"] = self.embedded.address
            creds = self.embedded.credentials  # through the pipe, never the environment
            self._nats_secret = {"nats_token": creds.token}
            if not settings.nats_monitor_url and self.embedded.monitor_url:
                self._nats_env["NATSGW_NATS_MONITOR_URL"] = self.embedded.monitor_url
        try:
            self._hold = bind_tcp(
                settings.grpc_host, settings.grpc_port, reuse_port=True, listen=False
            )
        except OSError as exc:  # taken (by a process not sharing it), or not an address here
            where = f"{settings.grpc_host}:{settings.grpc_port}"
            raise SupervisorError(f"cannot listen on {where}: {exc}") from None
        self.port = bound_port(self._hold)
        self._keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
        if settings.http_port is not None:
            self.http = WorkersHttp(self.workers, started=lambda: self.announced)
            await self.http.start(settings.http_host or settings.grpc_host, settings.http_port)

    async def wait_serving(self) -> bool:
        """True once every slot has served or is crash-looping, and a worker serves now (a
        slot that keeps dying does not hold back the others); False if a stop came first."""
        while not self._stop.is_set():
            workers = self.workers
            if all(w.served_once or w.crash_looping for w in workers) and any(
                w.serving.is_set() for w in workers
            ):
                return True
            self._changed.clear()
            changed = asyncio.ensure_future(self._changed.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait((changed, stop), return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stop.cancel()
        return False

    def _nobody_can_serve(self) -> bool:
        """Every slot keeps dying and none serves now: the rule for giving up."""
        workers = self.workers
        return all(w.crash_looping for w in workers) and not any(
            w.serving.is_set() for w in workers
        )

    def _ever_served(self) -> bool:
        return any(w.served_once for w in self.workers)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (see :func:`supervise`)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            if await self.wait_serving():
                self.announced = True
                await self._announce()
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)
            await self.stop()
        if self.failure:
            stopped = "natsgw: " if self._status == _CONFIG_ERROR else "natsgw: stopped: "
            print(stopped + self.failure, file=sys.stderr)
        return self._status

    async def _announce(self) -> None:
        settings = self.settings
        if settings.consul_enabled:
            self._consul = ConsulRegistration(
                settings, self.port, tls=settings.tls_cert_file is not None
            )
            self._consul.start()
        log.info(
            "natsgw_started",
            grpc=f"{settings.grpc_host}:{self.port}",
            workers=[w.pid for w in self.workers],
            http=self.http.port if self.http is not None else None,
            nats=list(settings.nats_urls) or [self._nats_env["NATS_URLS"]],
            embedded=settings.embedded,
        )

    async def stop(self) -> None:
        """Workers drain and exit first (each as a single gateway stops); the server goes last."""
        self._stopping = True
        self._stop.set()
        if self._consul is not None:
            await self._consul.stop()
            self._consul = None
        for worker in self.workers:
            _signal(worker.proc, signal.SIGTERM)
        if self._keepers:
            _, late = await asyncio.wait(
                self._keepers, timeout=self.settings.shutdown_grace + _EXIT_MARGIN
            )
            for worker in self.workers:
                _signal(worker.proc, signal.SIGKILL)
            if late:
                log.error("workers_killed", workers=[w.pid for w in self.workers if w.proc])
                await asyncio.wait(late)
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        if self.lock is not None:  # after the store's server is gone
            self.lock.release()
            self.lock = None
        log.info("natsgw_stopped", restarts=sum(w.restarts for w in self.workers))

    # -- one slot ---------------------------------------------------------------------------

    async def _keep(self, worker: Worker) -> None:
        """Run a worker in this slot until stopping; restart it with backoff when it dies."""
        while not self._stopping:
            try:
                served = await self._run_once(worker)
            except OSError as exc:  # could not start it at all (fork, pipes): as if it died
                log.error("worker_not_started", worker=worker.index, error=str(exc))
                worker.proc, served = None, False
            if self._stopping:
                return
            proc = worker.proc
            code = proc.returncode if proc is not None else None
            lived = self._loop.time() - worker.started_at
            worker.failures = 0 if lived >= _STABLE else worker.failures + 1
            worker.last_exit = _describe(code)
            log.error(
                "worker_died",
                worker=worker.index,
                pid=worker.pid,
                exit=worker.last_exit,
                lived=round(lived, 1),
                failures=worker.failures,
            )
            if code == _CONFIG_ERROR and not served and not self._ever_served():
                log.error("workers_failing", worker=worker.index, detail="cannot start")
                self._give_up(
                    f"cannot start: worker {worker.index} exited with status {code} before "
                    "serving (its message is above)",
                    status=_CONFIG_ERROR,
                )
                return
            if worker.failures == _MAX_FAILURES:
                self._changed.set()
                log.error(
                    "worker_crash_looping",
                    worker=worker.index,
                    failures=worker.failures,
                    last_exit=worker.last_exit,
                    serving=[w.index for w in self.workers if w.serving.is_set()],
                    detail="restarted with backoff; the other workers keep serving",
                )
            if self._nobody_can_serve():
                log.error("workers_failing", worker=worker.index, detail="keeps dying")
                self._give_up(
                    f"every worker keeps dying: each died {_MAX_FAILURES} or more times in a "
                    f"row within {_STABLE:g} s of starting (last: worker {worker.index}, "
                    f"{worker.last_exit})"
                )
                return
            worker.restarts += 1
            delay = _RESTART.delay(worker.failures)
            log.info("worker_restarting", worker=worker.index, delay=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _stable(self, worker: Worker) -> None:
        """The worker in ``worker``'s slot lived _STABLE seconds: its slot is healthy again."""
        if worker.crash_looping:
            log.info("worker_recovered", worker=worker.index, pid=worker.pid)
        worker.failures = 0
        self._changed.set()

    async def _run_once(self, worker: Worker) -> bool:
        """Start a worker process and wait for it to exit; True if it served meanwhile."""
        secret_r, secret_w = os.pipe()
        status_r, status_w = os.pipe()
        secrets_out = {"ack_token_secret": self._secret, **self._nats_secret}
        try:
            os.write(secret_w, json.dumps(secrets_out).encode())  # far below a pipe's buffer
        finally:
            os.close(secret_w)
        env = self._worker_env(worker.index, secret_r, status_w)
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "natsgw.ops.workers",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(secret_r, status_w),
                start_new_session=True,
            )
        finally:
            os.close(secret_r)
            os.close(status_w)
        worker.started_at = self._loop.time()
        if self._stopping:  # stop() came while it was being started
            _signal(worker.proc, signal.SIGTERM)
        log.info("worker_started", worker=worker.index, pid=worker.proc.pid)
        exited = asyncio.ensure_future(worker.proc.wait())
        try:
            status = await _read_status(status_r)
            served = status is not None
            if status is not None:
                worker.http_port = int(status.get("http_port") or 0)
                worker.served_once = True
                worker.serving.set()
                self._changed.set()
            left = _STABLE - (self._loop.time() - worker.started_at)
            done, _ = await asyncio.wait((exited,), timeout=max(left, 0.0))
            if not done:
                self._stable(worker)
            await exited
        finally:
            exited.cancel()
            worker.serving.clear()
            worker.http_port = 0
            self._changed.set()
        return served

    def _worker_env(self, index: int, secret_fd: int, status_fd: int) -> dict[str, str]:
        env = dict(self.env)
        env.pop("NATSGW_ACK_TOKEN_SECRET", None)  # it comes through the pipe
        if self._nats_secret:  # the embedded server's credentials come through it too
            for name in ("NATS_USERNAME", "NATS_PASSWORD", "NATS_TOKEN"):
                env.pop(name, None)
        env.update(self._nats_env)
        env.update(
            {
                ENV_INDEX: str(index),
                ENV_PARENT: str(os.getpid()),
                ENV_SECRET_FD: str(secret_fd),
                ENV_STATUS_FD: str(status_fd),
                "GRPC_PORT": str(self.port),
                "NATSGW_WORKERS": str(self.settings.workers),
                "CONSUL_ENABLED": "false",  # the supervisor registers the one port
            }
        )
        if self.settings.http_port is not None:  # private: the supervisor serves the real one
            env.update(NATSGW_HTTP_HOST="127.0.0.1", NATSGW_HTTP_PORT="0")
        else:
            env.pop("NATSGW_HTTP_PORT", None)
        return env


def _signal(proc: asyncio.subprocess.Process | None, sig: signal.Signals) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _describe(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        return signal.Signals(-code).name
    return f"status {code}"


async def _read_status(fd: int) -> dict[str, int] | None:
    """The line a worker writes once it serves; None if it exits first (end of pipe)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        line = await reader.readline()
    finally:
        transport.close()
    if not line:
        return None
    status = json.loads(line)
    return status if isinstance(status, dict) else None


def supervise(settings: Settings) -> int:
    """``natsgw serve`` with NATSGW_WORKERS > 1. Exit status as a single gateway's: 0 after a
    clean stop; 2 when start-up failed (the data directory or port is taken, the nats-server or
    the workers cannot start for a configuration error); 1 when it stopped because it could no
    longer serve (workers keep dying, the embedded nats-server kept failing)."""

    async def main() -> int:
        return await Supervisor(settings).run()

    try:
        return asyncio.run(main())
    except (EmbeddedServerError, SupervisorError, DataDirInUse) as exc:
        line = " | ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"natsgw: cannot start: {line}", file=sys.stderr)
        return _CONFIG_ERROR


# -- the worker side ------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker (graceful drain) if the supervisor dies without stopping it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _read_secrets(fd: int) -> dict[str, str]:
    """What the supervisor wrote to the pipe: the ack-token secret, the embedded server's
    credentials when it runs one."""
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    given = json.loads(b"".join(chunks))
    if not isinstance(given, dict) or not isinstance(given.get("ack_token_secret"), str):
        raise ValueError("malformed secrets from the supervisor")
    return {k: v for k, v in given.items() if isinstance(v, str)}


async def _serve(settings: Settings, status_fd: int) -> None:
    from natsgw.server import Gateway, settle_heap  # heavy imports only in workers

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings)
    try:
        await gateway.start()
        settle_heap()
        status = {"pid": os.getpid(), "grpc_port": gateway.port, "http_port": gateway.http_port}
        os.write(status_fd, json.dumps(status).encode() + b"\n")
        os.close(status_fd)
        await stop.wait()
    finally:
        await gateway.stop()


def worker_main() -> int:
    """Entry of ``python -m natsgw.ops.workers``, started by :class:`Supervisor` only."""
    from natsgw.ops.logs import configure

    try:
        index = int(os.environ[ENV_INDEX])
        _die_with_parent(int(os.environ[ENV_PARENT]))
        given = _read_secrets(int(os.environ.pop(ENV_SECRET_FD)))
        status_fd = int(os.environ.pop(ENV_STATUS_FD))
    except (KeyError, ValueError, OSError):
        print("natsgw.ops.workers: started by natsgw serve (NATSGW_WORKERS) only", file=sys.stderr)
        return _CONFIG_ERROR
    try:
        settings = dataclasses.replace(
            Settings.from_env(), ack_token_secret=SecretStr(given["ack_token_secret"])
        )
        if "nats_token" in given:  # the supervisor's embedded nats-server
            settings = dataclasses.replace(settings, nats_token=SecretStr(given["nats_token"]))
    except ConfigError as exc:
        print(f"natsgw: configuration error: {exc}", file=sys.stderr)
        return _CONFIG_ERROR
    configure(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(worker=index)
    from natsgw.server import StartupError

    try:
        asyncio.run(_serve(settings, status_fd))
    except ConfigError as exc:
        print(f"natsgw: configuration error: {exc}", file=sys.stderr)
        return _CONFIG_ERROR
    except StartupError as exc:
        print(f"natsgw: cannot start: {exc}", file=sys.stderr)
        return _CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
