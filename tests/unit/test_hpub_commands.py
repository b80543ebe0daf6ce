"""natsgw.compat.nats.HPubCommands / header_block: the bytes queued for a message with headers
are the bytes nats-py's own ``publish`` queues for it (a fresh, unconnected nats-py client's
private send path, the one ``Client.publish`` ends in, records them without a socket)."""

from __future__ import annotations

import pytest
from nats import errors as nats_errors
from nats.aio.client import Client

from natsgw.compat.nats import HPubCommands, header_block


async def _nats_py_bytes(subject: str, reply: str, data: bytes, headers: dict[str, str]) -> bytes:
    client = Client()
    await client._send_publish(subject, reply, data, len(data), headers)
    return b"".join(client._pending)


@pytest.mark.parametrize(
    "headers",
    [
        {"Nats-Expected-Stream": "NGW_t_orders"},
        {"Trace-Id": "  a b  ", "k": "v", "Nats-Msg-Id": "order-1", "e": ""},
        {" padded ": "x", "": "skipped", "u": "caf\u00e9"},
    ],
)
async def test_commands_are_the_bytes_nats_py_queues(headers: dict[str, str]) -> None:
    commands = HPubCommands(Client())
    block = header_block(headers)
    commands.add_with_headers("orders.new", "_INBOX.abc.7", block, b"payload")
    commands.add_with_headers("orders.new", "_INBOX.abc.8", block, b"")
    expected = await _nats_py_bytes("orders.new", "_INBOX.abc.7", b"payload", headers)
    expected += await _nats_py_bytes("orders.new", "_INBOX.abc.8", b"", headers)
    assert b"".join(commands._parts) == expected
    assert (commands.count, commands.bytes) == (2, len(b"payload"))


def test_what_nats_py_refuses_is_refused() -> None:
    with pytest.raises(nats_errors.BadHeaderError):
        header_block({"caf\u00e9": "x"})
    with pytest.raises(nats_errors.BadHeaderError):
        header_block({"a:b": "x"})
    commands = HPubCommands(Client())
    block = header_block({"k": "v"})
    for subject, reply in [("", "r"), ("bad subject", "r"), ("ok", "re\r\nply"), ("ok", "r ep")]:
        with pytest.raises(nats_errors.BadSubjectError):
            commands.add_with_headers(subject, reply, block, b"x")
    assert commands.count == 0
