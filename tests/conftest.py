"""Fixtures: a real nats-server, an in-process gateway, and grpclib / grpcio clients.

Everything runs on free loopback ports in temporary directories. Tests isolate themselves by
using fresh user ids (:func:`tenant`), so one nats-server and one gateway serve the session.

Every nats-server here requires credentials, as natsgw's embedded one does: ``server.url``
carries them (``nats.connect(server.url)`` and ``NatsAdapter([server.url])`` just work), while
``server.address`` is the bare address an unauthenticated client would use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import nats
import pytest
import pytest_asyncio
from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.config import Settings
from natsgw.ops import credentials
from natsgw.ops.embedded import ClusterSpec, EmbeddedNatsServer, EmbeddedServerError
from natsgw.server import Gateway

ROOT = Path(__file__).resolve().parent.parent


def tenant(prefix: str = "user") -> str:
    """A user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture(scope="session")
async def nats_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedNatsServer]:
    # The monitoring port is on here: tests count subscriptions and slow consumers through it.
    server = EmbeddedNatsServer(
        tmp_path_factory.mktemp("nats"), max_payload=10 * 1024 * 1024, monitor=True
    )
    await server.start()
    yield server
    await server.stop()


def gateway_settings(nats_server: EmbeddedNatsServer, **overrides: Any) -> Settings:
    base = Settings(
        nats_urls=(nats_server.url,),
        nats_monitor_url=nats_server.monitor_url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        shutdown_grace=2.0,
    )
    return dataclasses.replace(base, **overrides)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest_asyncio.fixture
async def make_gateway(nats_server: EmbeddedNatsServer) -> AsyncIterator[GatewayFactory]:
    """Start extra gateways with custom settings; all are stopped after the test."""
    started: list[Gateway] = []

    async def make(nats: EmbeddedNatsServer | None = None, **overrides: Any) -> Gateway:
        gw = Gateway(gateway_settings(nats or nats_server, **overrides))
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


NatsFactory = Callable[..., Awaitable[EmbeddedNatsServer]]


@pytest_asyncio.fixture
async def make_nats(tmp_path: Path) -> AsyncIterator[NatsFactory]:
    """A nats-server of the test's own (to restart it, or to give it other limits; its
    monitoring port is off unless ``monitor=True``)."""
    started: list[EmbeddedNatsServer] = []

    async def make(**options: Any) -> EmbeddedNatsServer:
        server = EmbeddedNatsServer(tmp_path / f"nats{len(started)}", **options)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest_asyncio.fixture(scope="session")
async def gateway(nats_server: EmbeddedNatsServer) -> AsyncIterator[Gateway]:
    gw = Gateway(gateway_settings(nats_server))
    await gw.start()
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def stub(gateway: Gateway) -> AsyncIterator[pb.NatsServiceStub]:
    """A grpclib client built from natsgw's own generated stubs."""
    channel = Channel("127.0.0.1", gateway.port)
    yield pb.NatsServiceStub(channel)
    channel.close()


@pytest_asyncio.fixture
async def adapter(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsAdapter]:
    """natsgw's NATS adapter on the session's server (what the services are given)."""
    core = NatsAdapter([nats_server.url])
    await core.start(wait=5)
    yield core
    await core.close()


@pytest_asyncio.fixture
async def nc(nats_server: EmbeddedNatsServer) -> AsyncIterator[nats.NATS]:
    """A native NATS client, to look at what the gateway really did."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()  # not drain(): it would wait for messages a test chose not to read


_OWN_POOL = """_pool = _descriptor_pool.DescriptorPool()
from google.protobuf import duration_pb2 as _wkt_duration, timestamp_pb2 as _wkt_timestamp
_pool.AddSerializedFile(_wkt_duration.DESCRIPTOR.serialized_pb)
_pool.AddSerializedFile(_wkt_timestamp.DESCRIPTOR.serialized_pb)
DESCRIPTOR = _pool.AddSerializedFile("""


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def grpcio_stubs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    """``_pb2`` and ``_pb2_grpc`` from api/ by grpcio-tools, as clients in the field make them.

    They load under module names and into a descriptor pool of their own, like a separate client
    process: natsgw itself registered the same file in the default pool.
    """
    out = tmp_path_factory.mktemp("grpcio_stubs")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'api'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "api" / "nats_service.proto"),
        ],
        check=True,
    )
    pb2_path = out / "nats_service_pb2.py"
    source = pb2_path.read_text()
    source = source.replace("DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(", _OWN_POOL)
    pb2_path.write_text(source)
    grpc_path = out / "nats_service_pb2_grpc.py"
    grpc_path.write_text(
        grpc_path.read_text().replace(
            "import nats_service_pb2 as", "import client_nats_service_pb2 as"
        )
    )
    pb2 = _load_module("client_nats_service_pb2", pb2_path)
    return pb2, _load_module("client_nats_service_pb2_grpc", grpc_path)


async def settled(nc: nats.NATS) -> None:
    """Return once the server has processed everything ``nc`` sent, subscriptions included.

    nats-py 2.16's ``flush()`` writes its PING straight to the socket, possibly ahead of a SUB
    still queued for its flusher task, so one PONG does not prove the SUB was read. By the time
    that PONG is back the flusher has written the SUB; a second PING is then queued behind it.
    """
    await nc.flush()
    await nc.flush()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- a 3-node nats-server cluster (tests/integration/test_cluster*.py) ---------------------------


def record_writes(transport: Any) -> list[bytes]:
    """Everything written to a nats-py transport from now on (it still goes out)."""
    writes: list[bytes] = []
    write, writelines = transport.write, transport.writelines

    def spy_write(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    def spy_writelines(chunks: list[bytes]) -> None:
        writes.extend(bytes(c) for c in chunks)
        writelines(chunks)

    transport.write, transport.writelines = spy_write, spy_writelines
    return writes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class NatsCluster:
    """Three nats-servers with routes between them and JetStream, each on its own store."""

    nodes: list[EmbeddedNatsServer]

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(node.url for node in self.nodes)

    def node(self, server_name: str) -> EmbeddedNatsServer:
        (found,) = [n for n in self.nodes if n.server_name == server_name]
        return found

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until JetStream answers on every running node (it has a meta leader)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        running = [n for n in self.nodes if n.running]
        for node in running:
            while True:
                try:
                    client = await nats.connect(node.url, allow_reconnect=False)
                    try:
                        info = await client.jetstream(timeout=2).account_info()
                    finally:
                        await client.close()
                    if info is not None:
                        break
                except Exception:
                    if loop.time() > deadline:
                        raise
                await asyncio.sleep(0.2)

    async def stream_leader(self, stream: str) -> str:
        """The server_name of ``stream``'s leader (NATS name of the stream)."""
        client = await nats.connect(list(self.urls))
        try:
            info = await client.jetstream(timeout=5).stream_info(stream)
        finally:
            await client.close()
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)


async def restart_node(node: EmbeddedNatsServer, attempts: int = 20) -> None:
    """Start a killed node again on its own ports. Its route port was free while it ran, but a
    client socket elsewhere on the machine may take it as an ephemeral port meanwhile: wait for
    it to be released rather than fail the test on a port clash."""
    for attempt in range(attempts):
        try:
            await node.start()
            return
        except EmbeddedServerError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)


async def start_cluster(base: Path, size: int = 3, attempts: int = 3) -> NatsCluster:
    """Start ``size`` routed nodes; ports are picked again when one was taken meanwhile."""
    for attempt in range(attempts):
        try:
            return await _start_cluster(base / f"try{attempt}", size)
        except EmbeddedServerError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def _start_cluster(base: Path, size: int) -> NatsCluster:
    route_ports = [free_port() for _ in range(size)]
    routes = [f"nats-route://127.0.0.1:{port}" for port in route_ports]
    shared = credentials.generate()  # one user for clients and routes on every node
    nodes = [
        EmbeddedNatsServer(
            base / f"n{i}",
            server_name=f"n{i}",
            cluster=ClusterSpec("natsgw-test", route_ports[i], routes),
            max_payload=8 * 1024 * 1024,
            credentials=shared,
        )
        for i in range(size)
    ]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
    except BaseException:
        await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)
        raise
    cluster = NatsCluster(nodes)
    await cluster.ready()
    return cluster


@pytest_asyncio.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A fresh 3-node JetStream cluster on loopback for one test (nodes get killed in tests)."""
    cluster = await start_cluster(tmp_path / "cluster")
    yield cluster
    await asyncio.gather(*(node.stop() for node in cluster.nodes))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: bounded mixed-traffic leak check (NATSGW_SOAK_SECONDS, default 30)"
    )
