"""The client's ack batcher on its own: batching, flush on close, call size, lease extension."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from natsgw._generated.isa import nats as pb
from natsgw.client.consumer import MAX_TOKENS_PER_CALL, AckBatcher, SendAcks
from natsgw.client.types import AckAction, JsMsg

Sent = list[tuple[list[str], AckAction, datetime.timedelta | None]]


def recorder() -> tuple[Sent, SendAcks]:
    sent: Sent = []

    async def send(
        tokens: list[str], action: AckAction, delay: datetime.timedelta | None
    ) -> pb.AckMessagesResponse:
        sent.append((list(tokens), action, delay))
        return pb.AckMessagesResponse(
            succeeded=len(tokens), results=[pb.AckResult(success=True) for _ in tokens]
        )

    return sent, send


def delivery(batcher: AckBatcher, n: int) -> JsMsg:
    msg = JsMsg(f"s.{n}", b"", {}, n, n, 1, 0, None, f"tok{n}", batcher)
    batcher.held(msg)
    return msg


async def test_acks_go_out_in_batches_and_the_rest_on_close() -> None:
    sent, send = recorder()
    batcher = AckBatcher(send, ack_batch=3, ack_interval=10, ack_wait=30, max_lease=60)
    batcher.start()
    msgs = [delivery(batcher, n) for n in range(5)]
    for msg in msgs[:3]:
        msg.ack()
    await asyncio.sleep(0.05)
    assert sent == [(["tok0", "tok1", "tok2"], AckAction.ACK, None)]  # batch full: sent at once
    msgs[3].nak(datetime.timedelta(seconds=2))
    msgs[4].term()
    with pytest.raises(RuntimeError, match="already acknowledged"):
        msgs[4].ack()
    await batcher.close()
    assert sent[1:] == [
        (["tok3"], AckAction.NAK, datetime.timedelta(seconds=2)),
        (["tok4"], AckAction.TERMINATE, None),
    ]
    assert (batcher.settled, batcher.failed, batcher.outstanding) == (5, 0, 0)


async def test_interval_flushes_a_partial_batch() -> None:
    sent, send = recorder()
    batcher = AckBatcher(send, ack_batch=100, ack_interval=0.05, ack_wait=30, max_lease=60)
    batcher.start()
    delivery(batcher, 1).ack()
    await asyncio.sleep(0.2)
    assert sent == [(["tok1"], AckAction.ACK, None)]
    await batcher.close()


async def test_held_messages_are_extended_until_max_lease_and_calls_stay_small() -> None:
    sent, send = recorder()
    batcher = AckBatcher(send, ack_batch=10_000, ack_interval=10, ack_wait=0.1, max_lease=0.35)
    held = [delivery(batcher, n) for n in range(MAX_TOKENS_PER_CALL + 1)]
    batcher.start()
    await asyncio.sleep(0.18)  # one extension round (every ack_wait / 2 = 0.05 s at least once)
    extensions = [call for call in sent if call[1] is AckAction.IN_PROGRESS]
    assert extensions and max(len(tokens) for tokens, _, _ in extensions) <= MAX_TOKENS_PER_CALL
    assert {t for tokens, _, _ in extensions for t in tokens} == {m.ack_token for m in held}
    await asyncio.sleep(0.4)  # past max_lease: let go, no more extensions
    sent.clear()
    await asyncio.sleep(0.15)
    assert sent == [] and batcher.outstanding == 0
    await batcher.close()
