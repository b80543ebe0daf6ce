"""Reading NATS's advisories and naming dead-letter copies (pure)."""

from __future__ import annotations

import json

from natsgw.adapter.dead_letters import MAX_DELIVERIES, TERMINATED, Advisory, parse_advisory
from natsgw.service.dead_letters import copy_id

# As nats-server 2.15.1 publishes them (captured from a real server).
TERMINATED_JSON = (
    b'{"type":"io.nats.jetstream.advisory.v1.terminated","id":"iy6CBM9SEzasPu4T1N9ygV",'
    b'"timestamp":"2026-12-08T00:59:37.856563794Z","stream":"S","consumer":"w",'
    b'"consumer_seq":2,"stream_seq":2,"deliveries":1,"reason":"bad payload here"}'
)
MAX_DELIVER_JSON = (
    b'{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"iy6CBM9SEzasPu4T1N9yoz",'
    b'"timestamp":"2026-12-08T00:59:37.858068748Z","stream":"S","consumer":"w",'
    b'"stream_seq":1,"deliveries":2}'
)


def test_both_advisories_are_read() -> None:
    expected = Advisory(TERMINATED, "S", "w", 2, 1, "bad payload here")
    assert parse_advisory(TERMINATED_JSON) == expected
    assert parse_advisory(MAX_DELIVER_JSON) == Advisory(MAX_DELIVERIES, "S", "w", 1, 2)


def test_anything_else_is_not_an_advisory() -> None:
    for data in [
        b"",
        b"not json",
        b"[]",
        b'{"type":"io.nats.jetstream.advisory.v1.nak"}',
        json.dumps({"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": "S"}).encode(),
        json.dumps(
            {
                "type": "io.nats.jetstream.advisory.v1.terminated",
                "stream": "S",
                "consumer": "w",
                "stream_seq": "x",
            }
        ).encode(),
    ]:
        assert parse_advisory(data) is None, data


def test_copy_ids_differ_per_give_up_event() -> None:
    term = Advisory(TERMINATED, "S", "w", 7, 3, "r")
    maxed = Advisory(MAX_DELIVERIES, "S", "w", 7, 3)
    other = Advisory(MAX_DELIVERIES, "S", "w2", 7, 3)
    assert copy_id("jobs", term) == "jobs:w:7:term"
    assert copy_id("jobs", maxed) == "jobs:w:7:3"
    assert len({copy_id("jobs", a) for a in (term, maxed, other)}) == 3
