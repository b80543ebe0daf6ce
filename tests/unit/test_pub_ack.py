"""The PubAck fast path of batched stream publishes: it reads only the common answers and
hands everything else to the JSON parser (which it must agree with)."""

from __future__ import annotations

import json

import pytest

from natsgw.adapter.jetstream import _quick_pub_ack
from natsgw.adapter.types import StreamPubAck

STREAM = "NGW_t_orders"
PREFIX = b'{"stream":"' + STREAM.encode() + b'","seq":'


@pytest.mark.parametrize(
    "answer",
    [b'{"stream":"NGW_t_orders","seq":1}', b'{"stream":"NGW_t_orders","seq":18446744073709551615}',
     b'{"stream":"NGW_t_orders","seq":42,"duplicate":true}'],
)  # fmt: skip
def test_common_answers_read_as_json_reads_them(answer: bytes) -> None:
    full = json.loads(answer)
    assert _quick_pub_ack(answer, PREFIX, STREAM) == StreamPubAck(
        stream=full["stream"], sequence=full["seq"], duplicate=full.get("duplicate", False)
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b'{"error":{"code":503,"err_code":10077,"description":"wrong last sequence"}}',
        b'{"stream":"NGW_t_other","seq":1}',  # another stream: never read as ours
        b'{"stream":"NGW_t_orders","seq":1,"domain":"hub"}',
        b'{"stream":"NGW_t_orders","seq":1,"duplicate":false}',
        b'{"stream":"NGW_t_orders","seq":-1}',
        b'{"stream":"NGW_t_orders","seq":}',
        b'{"stream":"NGW_t_orders","seq":1.5}',
        b'{"stream":"NGW_t_orders","seq": 1}',
        b'{"stream":"NGW_t_orders","seq":\xd9\xa1}',  # a non-ASCII digit
        b'{"stream":"NGW_t_orders","seq":1}\n',
        b'{"stream":"NGW_t_orders","seq":1,"val":"2"}',
    ],
)
def test_anything_else_goes_to_the_full_parser(answer: bytes) -> None:
    assert _quick_pub_ack(answer, PREFIX, STREAM) is None
