"""What every row gets: the sizes of this run, the clients, and the gateway's process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from scripts.bench.client import GatewayClient, in_flight
from scripts.bench.processes import MIB, Profiler


@dataclass(frozen=True)
class Sizes:
    """How much each row moves. BATCH and IN_FLIGHT are the issue's and never change."""

    publish_msgs: int
    subscribe_msgs: int
    kv_ops: int
    consume_msgs: int
    stream_msgs: int
    object_bytes: int
    object_rounds: int
    streamed_object_bytes: int
    unary_seconds: float


FULL = Sizes(60_000, 20_000, 4_000, 30_000, 30_000, 8 * MIB, 5, 64 * MIB, 10.0)
QUICK = Sizes(12_000, 8_000, 1_000, 6_000, 8_000, 8 * MIB, 2, 32 * MIB, 3.0)
SMOKE = Sizes(2_000, 2_000, 128, 1_000, 2_000, 1 * MIB, 1, 2 * MIB, 0.5)

BATCH = 1000
IN_FLIGHT = 4
PAYLOAD = b"x" * 128


@dataclass
class Context:
    sizes: Sizes
    gateway: GatewayClient
    gateway_port: int
    gateway_pid: int
    nc: NATS
    js: JetStreamContext
    profiler: Profiler
    bare_port: int
    bare_pid: int

    async def send_batches(self, method: str, request: Any, messages: int) -> float:
        """``messages // BATCH`` calls of a batch publish RPC, IN_FLIGHT at a time; each must
        report its whole batch published. Returns the elapsed seconds."""
        call = self.gateway.unary(method)
        payload = request.SerializeToString()  # once: the client's encoding stays out of it

        async def one(_: int) -> None:
            response = await call(payload)
            if response.published_count != BATCH:
                raise RuntimeError(f"{method} published {response.published_count} of {BATCH}")

        return await in_flight(IN_FLIGHT, messages // BATCH, one)
