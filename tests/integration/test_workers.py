"""``NATSGW_WORKERS=2 natsgw serve`` as operators run it: real processes, embedded nats-server.

Which worker serves a connection is the kernel's choice (SO_REUSEPORT), so the tests find out:
one call per fresh connection, then the supervisor's /metrics says whose call counter moved.
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
from tests.conftest import tenant, wait_for
from tests.integration._jetstream import make_consumer, make_stream, ns_of, publish

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0  # two workers import natsgw at once on a shared 2-core machine


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

    def started(self) -> dict[str, Any]:
        """The supervisor's start event (every worker serves)."""
        return self.event(lambda e: e["event"] == "natsgw_started" and "workers" in e)

    @property
    def nats_pid(self) -> int:
        return int(self.event(lambda e: e["event"] == "embedded_nats_started")["pid"])

    @property
    def nats_url(self) -> str:
        return str(self.event(lambda e: e["event"] == "embedded_nats_started")["url"])

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=10
            ) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def calls_by_worker(self) -> dict[str, float]:
        """natsgw_rpc_calls_total summed per worker label, from the supervisor's /metrics."""
        status, text = self.http("/metrics")
        assert status == 200
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "natsgw_rpc_calls_total":
                    worker = sample.labels["worker"]
                    totals[worker] = totals.get(worker, 0.0) + sample.value
        return totals

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


async def one_channel_per_worker(served: Supervised, user: str) -> dict[str, Channel]:
    """Fresh connections until every worker has one: worker label -> a channel it serves."""
    found: dict[str, Channel] = {}
    spare: list[Channel] = []
    for _ in range(40):
        channel = Channel("127.0.0.1", served.port)
        before = served.calls_by_worker()
        reply = await pb.NatsServiceStub(channel).publish(
            pb.PublishRequest(user_id=user, subject="who", data=b"?")
        )
        assert reply.success
        after = served.calls_by_worker()
        moved = [w for w in after if after[w] != before.get(w, 0.0)]
        assert len(moved) == 1, (before, after)
        if moved[0] in found:
            spare.append(channel)
        else:
            found[moved[0]] = channel
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
    assert json.loads(body) == {"ready": True, "workers": 2}
    status, body = two_workers.http("/healthz")
    assert status == 200
    pids = json.loads(body)["workers"]
    assert sorted(pids) == ["0", "1"]
    assert len({pids["0"], pids["1"], two_workers.proc.pid}) == 3
    status, text = two_workers.http("/metrics")
    connected = {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "natsgw_nats_connected"
    }
    assert connected == {"0": 1.0, "1": 1.0}
    assert 'natsgw_worker_restarts_total{worker="1"} 0.0' in text


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
    assert sorted(e["worker"] for e in drained) == [0, 1]  # each worker drained, none was cut


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
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"NATSGW_ACK_TOKEN_SECRET" not in environ
    assert "secret" not in "".join(two_workers.lines).lower()


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


def test_a_worker_that_keeps_dying_stops_the_gateway_non_zero(tmp_path: Path) -> None:
    served = Supervised(tmp_path)
    try:
        killed: list[int] = []
        for _ in range(5):  # each replacement dies at once: five deaths in a row, none stable
            started = served.event(
                lambda e: e["event"] == "worker_started" and e["worker"] == 0
                and e["pid"] not in killed
            )  # fmt: skip
            os.kill(started["pid"], signal.SIGKILL)
            killed.append(started["pid"])
        code = served.proc.wait(START_TIMEOUT)
    finally:
        served.stop()
    assert code == 1
    failing = served.event(lambda e: e["event"] == "workers_failing")
    assert failing["detail"] == "keeps dying"
    assert "natsgw: stopped: worker 0 died 5 times in a row" in "".join(served.lines)
    deaths = [e for e in served.events if e["event"] == "worker_died" and e["worker"] == 0]
    assert [e["failures"] for e in deaths] == [1, 2, 3, 4, 5]
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
