"""natsgw.compat.nats.publish_request: the bytes queued for a request are the bytes nats-py's
own ``publish`` queues for it, and what it refuses is refused (a fresh, unconnected nats-py
client's pending buffer records them without a socket)."""

from __future__ import annotations

import pytest
from nats import errors as nats_errors
from nats.aio.client import Client

from natsgw.compat.nats import publish_request


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (b"", None),
        (b'{"seq": 7}', None),
        (b"payload", {"Nats-Expected-Stream": "KV_b", "Trace-Id": "  a b  ", "": "skipped"}),
    ],
)
async def test_the_command_is_what_client_publish_queues(
    data: bytes, headers: dict[str, str] | None
) -> None:
    ours, theirs = Client(), Client()
    for client in (ours, theirs):  # not connected: queued as while reconnecting, into a buffer
        client._max_pending_size = 1 << 20
    await publish_request(ours, "$JS.API.DIRECT.GET.KV_b.$KV.b.k", "_INBOX.x.1", data, headers)
    await theirs.publish(
        "$JS.API.DIRECT.GET.KV_b.$KV.b.k", data, reply="_INBOX.x.1", headers=headers
    )
    assert b"".join(ours._pending) == b"".join(theirs._pending)
    assert ours.stats["out_msgs"] == theirs.stats["out_msgs"] == 1
    assert ours.stats["out_bytes"] == theirs.stats["out_bytes"] == len(data)


async def test_what_client_publish_refuses_is_refused_and_nothing_queued() -> None:
    client = Client()
    client._max_pending_size = 1 << 20
    for subject, reply in [("", "r"), ("bad subject", "r"), ("ok", "re\r\nply"), ("ok", "r ep")]:
        with pytest.raises(nats_errors.BadSubjectError):
            await publish_request(client, subject, reply, b"x")
    with pytest.raises(nats_errors.BadHeaderError):
        await publish_request(client, "ok", "r", b"x", {"a:b": "x"})
    with pytest.raises(nats_errors.MaxPayloadError):
        await publish_request(client, "ok", "r", b"x" * (client.max_payload + 1))
    assert client._pending == []
    client._max_pending_size = 0  # not connected, no reconnect buffer: as Client.publish
    with pytest.raises(nats_errors.OutboundBufferLimitError):
        await publish_request(client, "ok", "r", b"x")
