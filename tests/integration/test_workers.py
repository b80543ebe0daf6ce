"""``NATSGW_WORKERS=2 natsgw serve`` as operators run it: real processes, embedded nats-server.

Which worker serves a connection is the kernel's choice (SO_REUSEPORT), so the tests find out
from the kernel too: the worker process holding the server end of the test's connection
(/proc). (Diffing the merged /metrics before and after a call was flaky: a worker too slow to
answer a scrape was left out of it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from grpclib.client import Channel
from prometheus_client.parser import text_string_to_metric_families

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from tests.conftest import restart_node, tenant, wait_for
from tests.integration._jetstream import make_consumer, make_stream, ns_of, publish
from tests.integration.test_embedded_auth import refused

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0  # two workers import natsgw at once on a shared 2-core machine


def _tcp_table() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every TCP socket of this network namespace."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in (f[1], f[2]))
            rows.append((local, remote, f[3], f[9]))
    return rows


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def client_ports(port: int) -> set[int]:
    """Local ports of this process's established connections to ``port``."""
    mine = _socket_inodes(os.getpid())
    return {
        local
        for local, remote, state, inode in _tcp_table()
        if remote == port and state == "01" and inode in mine
    }


def serving_pid(port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end (``port``) of the connection from ``client_port``."""
    ends = {
        inode for local, remote, _, inode in _tcp_table() if (local, remote) == (port, client_port)
    }
    for pid in pids:
        with contextlib.suppress(OSError):
            if ends & _socket_inodes(pid):
                return pid
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Supervised:
    """``natsgw serve`` with NATSGW_WORKERS; its JSON log events are collected as they come."""

    def __init__(self, tmp_path: Path, workers: int = 2, **env: str) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.data_dir = tmp_path / "data"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSGW_", "GRPC_"))
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "natsgw", "serve"],
            env=base
            | {
                "NATSGW_DATA_DIR": str(self.data_dir),
                "NATSGW_LOG_FORMAT": "json",
                "NATSGW_WORKERS": str(workers),
                "GRPC_PORT": str(self.port),
                "NATSGW_HTTP_PORT": str(self.http_port),
                "NATSGW_SHUTDOWN_GRACE": "2",
            }
            | env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                with contextlib.suppress(ValueError):  # not every line is an event
                    self.events.append(json.loads(line))
                self._changed.notify_all()

    def event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = START_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError("no such log event; log:\n" + "".join(self.lines[-40:]))
                self._changed.wait(min(left, 0.5))

    def logged(self, predicate: Callable[[dict[str, Any]], bool]) -> bool:
        """Whether such an event was logged by now (no waiting)."""
        with self._changed:
            return any(predicate(event) for event in self.events)

    def started(self) -> dict[str, Any]:
        """The supervisor's start event (every worker serves)."""
        return self.event(lambda e: e["event"] == "natsgw_started" and "workers" in e)

    @property
    def nats_pid(self) -> int:
        return int(self.event(lambda e: e["event"] == "embedded_nats_started")["pid"])

    @property
    def nats_url(self) -> str:
        """The embedded nats-server's client URL, with the credentials natsgw generated."""
        address = str(self.event(lambda e: e["event"] == "embedded_nats_started")["url"])
        creds = json.loads((self.data_dir / "nats-credentials.json").read_text())
        return address.replace("://", f"://{creds['token']}@", 1)

    def worker_pids(self) -> dict[str, int]:
        """Worker index -> pid, of the workers serving now (the supervisor's /healthz)."""
        pids = json.loads(self.http("/healthz")[1])["workers"]
        return {index: pid for index, pid in pids.items() if pid}

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=10
            ) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(10)  # every line it wrote is in self.events


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    served = Supervised(tmp_path_factory.mktemp("workers"))
    try:
        served.started()
        yield served
    finally:
        served.stop()


async def channel_to_a_worker(served: Supervised, user: str) -> tuple[str, Channel]:
    """A new connection, one call on it, and the index of the worker that serves it."""
    pids = served.worker_pids()
    before = client_ports(served.port)
    channel = Channel("127.0.0.1", served.port)
    reply = await pb.NatsServiceStub(channel).publish(
        pb.PublishRequest(user_id=user, subject="who", data=b"?")
    )
    assert reply.success
    (new,) = client_ports(served.port) - before
    pid = serving_pid(served.port, new, list(pids.values()))
    assert pid is not None, f"no worker of {pids} holds the connection from port {new}"
    return next(index for index, p in pids.items() if p == pid), channel


async def one_channel_per_worker(served: Supervised, user: str) -> dict[str, Channel]:
    """Fresh connections until every worker has one: worker label -> a channel it serves."""
    found: dict[str, Channel] = {}
    spare: list[Channel] = []
    for _ in range(40):
        index, channel = await channel_to_a_worker(served, user)
        if index in found:
            spare.append(channel)
        else:
            found[index] = channel
        if len(found) == 2:
            break
    for channel in spare:
        channel.close()
    assert sorted(found) == ["0", "1"], f"connections all landed on workers {sorted(found)}"
    return found


async def test_connections_land_on_both_workers_and_acks_cross_them(
    two_workers: Supervised,
) -> None:
    user = tenant()
    channels = await one_channel_per_worker(two_workers, user)
    a, b = pb.NatsServiceStub(channels["0"]), pb.NatsServiceStub(channels["1"])
    try:
        await make_stream(a, user, "spread", ["spread.>"])
        await make_consumer(a, user, "spread", "c", ack_wait=datetime.timedelta(seconds=1))
        for i in range(3):
            await publish(b, user, "spread", "spread.x", str(i).encode())
        request = pb.ConsumeRequest(
            user_id=user,
            stream_name="spread",
            consumer_name="c",
            max_messages=10,
            heartbeat=datetime.timedelta(seconds=0.3),
        )
        responses: asyncio.Queue[pb.ConsumeResponse] = asyncio.Queue()

        async def read() -> None:
            async for response in a.consume(request):  # worker 0 delivers
                responses.put_nowait(response)

        reader = asyncio.create_task(read())
        try:
            received: list[pb.JetStreamMessage] = []
            while len(received) < 3:
                response = await asyncio.wait_for(responses.get(), 10)
                if response.message is not None:
                    received.append(response.message)
            assert [m.data for m in received] == [b"0", b"1", b"2"]
            # Worker 1 acks what worker 0 delivered: the shared secret verifies the tokens.
            acked = await b.ack_messages(
                pb.AckMessagesRequest(user_id=user, ack_tokens=[m.ack_token for m in received])
            )
            assert acked.succeeded == 3, acked.results
            # Past the 1 s ack wait only heartbeats come (an unacked message would be redelivered).
            await asyncio.sleep(2.5)
            assert not reader.done()
            while not responses.empty():
                assert responses.get_nowait().message is None, "an acked message was redelivered"
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        address = str(two_workers.event(lambda e: e["event"] == "embedded_nats_started")["url"])
        assert await refused(address), "the supervisor's nats-server let an anonymous client in"
        nc = await nats.connect(two_workers.nats_url)
        try:
            info = await nc.jetstream().consumer_info(ns_of(user).stream("spread"), "c")
        finally:
            await nc.close()
        assert info.num_ack_pending == 0
        assert info.num_redelivered == 0
        assert info.ack_floor.stream_seq == 3
    finally:
        for channel in channels.values():
            channel.close()


def test_the_side_port_answers_for_all_workers(two_workers: Supervised) -> None:
    status, body = two_workers.http("/readyz")
    assert status == 200, body
    assert json.loads(body) == {"ready": True, "workers": 2, "serving": 2}
    status, body = two_workers.http("/healthz")
    assert status == 200
    health = json.loads(body)
    pids = health["workers"]
    assert sorted(pids) == ["0", "1"]
    assert len({pids["0"], pids["1"], two_workers.proc.pid}) == 3
    assert health["unhealthy"] == {}
    status, text = two_workers.http("/metrics")
    assert by_worker(text, "natsgw_nats_connected") == {"0": 1.0, "1": 1.0}
    assert 'natsgw_worker_restarts_total{worker="1"} 0.0' in text
    # Every worker's samples are in, and the supervisor says so (none dropped silently).
    assert by_worker(text, "natsgw_worker_metrics_scraped") == {"0": 1.0, "1": 1.0}
    assert by_worker(text, "natsgw_worker_serving") == {"0": 1.0, "1": 1.0}
    assert by_worker(text, "natsgw_worker_crash_looping") == {"0": 0.0, "1": 0.0}


def by_worker(text: str, sample: str) -> dict[str, float]:
    return {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample
    }


async def test_a_killed_worker_is_replaced_and_sigterm_stops_everything(tmp_path: Path) -> None:
    served = Supervised(tmp_path)
    try:
        workers = served.started()["workers"]
        nats_pid = served.nats_pid
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        died = served.event(lambda e: e["event"] == "worker_died" and e["pid"] == victim)
        assert died["exit"] == "SIGKILL"
        replaced = served.event(
            lambda e: e["event"] == "worker_started" and e["worker"] == 0 and e["pid"] != victim
        )
        await wait_for(  # the replacement serves
            lambda: json.loads(served.http("/healthz")[1])["workers"]["0"] == replaced["pid"],
            START_TIMEOUT,
        )
        # The port kept serving throughout; the replacement serves too.
        user = tenant()
        channels = await one_channel_per_worker(served, user)
        for channel in channels.values():
            channel.close()
        assert served.http("/metrics")[1].count('natsgw_worker_restarts_total{worker="0"} 1.0')
    finally:
        code = served.stop()
    assert code == 0, "".join(served.lines[-20:])
    everyone = [replaced["pid"], workers[1], nats_pid]
    await wait_for(lambda: not any(alive(pid) for pid in everyone), 5.0)  # none outlives it
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", served.port)) != 0
    drained = [e for e in served.events if e["event"] == "natsgw_stopped" and "worker" in e]
    # Each worker drained, none was cut.
    assert sorted(e["worker"] for e in drained) == [0, 1], "".join(served.lines[-30:])


def test_workers_that_cannot_start_stop_the_gateway_with_status_2(tmp_path: Path) -> None:
    """As a single gateway: a start-up failure is status 2, with one line saying why."""
    served = Supervised(
        tmp_path,
        NATSGW_AUTH_MODE="token",
        NATSGW_AUTH_TOKENS_FILE=str(tmp_path / "missing-tokens.json"),
    )
    try:
        code = served.proc.wait(START_TIMEOUT)
    finally:
        served.stop()
    assert code == 2
    served.event(lambda e: e["event"] == "workers_failing")
    log = "".join(served.lines)
    assert "natsgw: configuration error: " in log  # the worker's own message
    assert "natsgw: cannot start: worker " in log  # the supervisor's
    nats_pid = served.nats_pid
    assert not alive(nats_pid), "the embedded nats-server outlived the supervisor"


def test_the_generated_ack_secret_is_never_printed(two_workers: Supervised) -> None:
    """The secret travels through a pipe: not in any worker's environment, not in the log."""
    pids = json.loads(two_workers.http("/healthz")[1])["workers"].values()
    token = json.loads((two_workers.data_dir / "nats-credentials.json").read_text())["token"]
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"NATSGW_ACK_TOKEN_SECRET" not in environ
        assert token.encode() not in environ  # the nats-server's token neither
        assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    logged = "".join(two_workers.lines)
    assert "secret" not in logged.lower()
    assert token not in logged


def test_a_port_taken_by_another_process_is_refused_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        served = Supervised(tmp_path, GRPC_PORT=str(taken.getsockname()[1]))
        try:
            code = served.proc.wait(START_TIMEOUT)
        finally:
            served.stop()
    assert code == 2
    assert "natsgw: cannot start: cannot listen on 127.0.0.1:" in "".join(served.lines)
    assert not [e for e in served.events if e["event"] == "worker_started"]
    assert not alive(served.nats_pid), "the embedded nats-server outlived the supervisor"


def kill_at_start(served: Supervised, slots: set[int], until: Callable[[], bool]) -> None:
    """SIGKILL each new worker of ``slots`` as soon as it is started, until ``until()`` (a
    worker an attacker can crash at will: none of its replacements ever gets stable)."""
    killed: list[int] = []
    while not until():
        try:
            started = served.event(
                lambda e: e["event"] == "worker_started" and e["worker"] in slots
                and e["pid"] not in killed
            )  # fmt: skip
        except AssertionError:  # the supervisor exited
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(started["pid"], signal.SIGKILL)
        killed.append(started["pid"])
        with contextlib.suppress(AssertionError):  # its death is logged before any exit
            served.event(died(started["pid"]))


def died(pid: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "worker_died" and e["pid"] == pid


def crash_looping(served: Supervised, slot: int) -> bool:
    return served.logged(lambda e: e["event"] == "worker_crash_looping" and e["worker"] == slot)


async def test_a_crash_looping_worker_never_takes_the_healthy_one_down(tmp_path: Path) -> None:
    """Issue #17 row K: before, 5 quick deaths of worker 0 stopped the gateway (exit 1), the
    healthy worker 1 included. Now worker 0's slot is reported crash-looping and restarted with
    backoff while worker 1 answers every call."""
    served = Supervised(tmp_path)
    try:
        workers = served.started()["workers"]
        user = tenant()
        channels = await one_channel_per_worker(served, user)
        channels.pop("0").close()
        healthy = pb.NatsServiceStub(channels["1"])
        answered, asked, stop = 0, 0, asyncio.Event()

        async def keep_calling() -> None:
            nonlocal answered, asked
            while not stop.is_set():
                asked += 1
                reply = await asyncio.wait_for(
                    healthy.publish(pb.PublishRequest(user_id=user, subject="up", data=b".")), 10
                )
                answered += reply.success
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)  # pacing, not synchronisation

        caller = asyncio.create_task(keep_calling())
        try:
            await asyncio.to_thread(kill_at_start_after, served, workers[0])
            looping = await asyncio.to_thread(
                served.event, lambda e: e["event"] == "worker_crash_looping"
            )
            assert looping["worker"] == 0 and looping["serving"] == [1]
            assert served.proc.poll() is None, "the supervisor gave up"
            status, body = served.http("/healthz")
            health = json.loads(body)
            assert status == 200 and health["workers"]["1"] == workers[1]
            assert "crash-looping" in health["unhealthy"]["0"]
            status, body = served.http("/readyz")
            ready = json.loads(body)
            assert status == 200 and ready["serving"] == 1 and "0" in ready["not_ready"]
            text = served.http("/metrics")[1]
            assert by_worker(text, "natsgw_worker_crash_looping") == {"0": 1.0, "1": 0.0}
            assert by_worker(text, "natsgw_worker_metrics_scraped")["1"] == 1.0
        finally:
            stop.set()
            await caller
            channels["1"].close()
        print(f"\nhealthy worker's answers during worker 0's crash loop: {answered}/{asked}")
        assert asked > 0 and answered == asked
        assert alive(workers[1])  # never restarted
    finally:
        code = served.stop()
    assert code == 0, "".join(served.lines[-20:])
    deaths = [e for e in served.events if e["event"] == "worker_died" and e["worker"] == 0]
    failures = [e["failures"] for e in deaths]  # counted in a row (the test may kill once more)
    assert failures == list(range(failures[0], failures[0] + len(failures)))
    assert failures[-1] >= 5
    delays = [e["delay"] for e in served.events if e["event"] == "worker_restarting"]
    assert len(delays) == len(deaths) and max(delays) <= 30.0  # backed off, capped


def kill_at_start_after(served: Supervised, first: int) -> None:
    """Kill the serving worker ``first``, then each of its replacements as it starts, until
    its slot is crash-looping."""
    os.kill(first, signal.SIGKILL)
    served.event(lambda e: e["event"] == "worker_died" and e["pid"] == first)
    kill_at_start(served, {0}, lambda: crash_looping(served, 0))


def test_the_gateway_gives_up_only_when_every_worker_keeps_dying(tmp_path: Path) -> None:
    served = Supervised(tmp_path)
    try:
        # Five quick deaths in a row in each slot; the supervisor exits by itself.
        kill_at_start(served, {0, 1}, lambda: served.proc.poll() is not None)
        code = served.proc.wait(START_TIMEOUT)
    finally:
        served.stop()
    assert code == 1
    failing = served.event(lambda e: e["event"] == "workers_failing")
    assert failing["detail"] == "keeps dying"
    assert "natsgw: stopped: every worker keeps dying" in "".join(served.lines)
    looping = {e["worker"] for e in served.events if e["event"] == "worker_crash_looping"}
    assert looping == {0, 1}
    for slot in (0, 1):
        deaths = [e for e in served.events if e["event"] == "worker_died" and e["worker"] == slot]
        assert [e["failures"] for e in deaths] == list(range(1, len(deaths) + 1))
        assert len(deaths) >= 5
    others = [e["pid"] for e in served.events if e["event"] == "worker_started"]
    assert not [pid for pid in others if alive(pid)], "a worker outlived the supervisor"
    assert not alive(served.nats_pid), "the embedded nats-server outlived the supervisor"


def test_the_supervisor_holds_the_data_directory(two_workers: Supervised) -> None:
    """One owner per JetStream store, as for a single gateway: a second serve is refused."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSGW_", "GRPC_"))}
    second = subprocess.run(
        [sys.executable, "-m", "natsgw", "serve"],
        env=env | {"NATSGW_DATA_DIR": str(two_workers.data_dir), "GRPC_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert second.returncode == 2, second.stderr
    assert "natsgw: cannot start:" in second.stderr
    assert str(two_workers.proc.pid) in second.stderr  # the holder is named


async def test_the_supervisor_fails_healthz_when_no_worker_reaches_nats(tmp_path: Path) -> None:
    """Every worker's own /healthz fails after a long NATS outage: the supervisor's does too (a
    liveness probe then restarts the gateway), and recovers with NATS."""
    server = EmbeddedNatsServer(tmp_path / "nats", port=free_port())
    await server.start()
    served = Supervised(tmp_path, NATS_URLS=server.url, NATSGW_NATS_DOWN_UNHEALTHY_AFTER="1")
    try:
        served.started()
        assert served.http("/healthz")[0] == 200
        await server.stop()

        def healthz_is(code: int) -> Callable[[], bool]:
            return lambda: served.http("/healthz")[0] == code

        await wait_for(healthz_is(503), timeout=30)
        code, body = served.http("/healthz")
        answer = json.loads(body)
        assert (code, answer["status"]) == (503, "failed")
        assert set(answer["unhealthy"]) == {"0", "1"}, answer
        assert all("NATSGW_NATS_DOWN_UNHEALTHY_AFTER" in r for r in answer["unhealthy"].values())
        await restart_node(server)
        await wait_for(healthz_is(200), timeout=60)
    finally:
        served.stop()
        await server.stop()
