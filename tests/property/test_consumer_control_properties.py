"""Consumer control and TTL fields (issue #18) keep the tenancy boundary: filter subjects are
mapped into and contained in the caller's namespace, reserved metadata keys never pass either
way, and a TTL is either a valid Nats-TTL value or INVALID_ARGUMENT."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TypeVar

from hypothesis import assume, given
from hypothesis import strategies as st

from natsgw._generated.isa import nats as pb
from natsgw.errors import InvalidArgument
from natsgw.service.jetstream_wire import MAX_TTL, consumer_spec, ttl_header
from natsgw.tenancy import (
    Namespace,
    public_metadata,
    reserved_metadata_key,
    tenant_metadata,
)
from tests.property.test_tenancy_properties import patterns, tenants

RESERVED = ["_nats", "_NATS.ver", "natsgw", "NatsGW.dead_letter", "_nats.level", "natsgwx"]
keys = st.one_of(
    st.sampled_from([*RESERVED, "team", "owner", "a.b", "x"]),
    st.builds(str.__add__, st.sampled_from(RESERVED), st.text(max_size=8)),
    st.text(max_size=12),
)
metadata = st.dictionaries(keys, st.text(max_size=8), max_size=6)

T = TypeVar("T")


def attempt(fn: Callable[[], T]) -> T | InvalidArgument:
    """The result, or the InvalidArgument it refused with."""
    try:
        return fn()
    except InvalidArgument as exc:
        return exc


@given(tenants, tenants, st.lists(patterns, min_size=1, max_size=4))
def test_filter_subjects_are_mapped_and_contained(a, b, filters) -> None:  # type: ignore[no-untyped-def]
    assume(a != b)
    made = attempt(lambda: (Namespace(a), Namespace(b)))
    assume(not isinstance(made, InvalidArgument))  # ids too long for a tenant key
    assert not isinstance(made, InvalidArgument)
    ns, other = made
    config = pb.ConsumerConfig(durable_name="c", filter_subjects=filters)
    spec = attempt(lambda: consumer_spec(ns, config))
    if isinstance(spec, InvalidArgument):
        assert spec.field.startswith("config.filter_subjects")
        return
    assert len(spec.filter_subjects) == len(filters)
    for original, mapped in zip(filters, spec.filter_subjects, strict=True):
        assert mapped.startswith(ns.subject_prefix)
        assert ns.from_subject(mapped) == original
        assert other.from_subject(mapped) is None  # never another tenant's subject


@given(metadata)
def test_reserved_metadata_keys_never_pass(values: dict[str, str]) -> None:
    shown = public_metadata(values)
    assert not any(reserved_metadata_key(k) for k in shown)
    assert all(values[k] == v for k, v in shown.items())
    accepted = attempt(lambda: tenant_metadata(values))
    if isinstance(accepted, InvalidArgument):
        assert accepted.field == "metadata"
        return
    assert accepted == values
    assert not any(k.casefold().startswith(("_nats", "natsgw")) for k in accepted)


@given(st.sampled_from(RESERVED), st.text(max_size=8))
def test_every_reserved_key_is_refused(prefix: str, rest: str) -> None:
    assert isinstance(attempt(lambda: tenant_metadata({prefix + rest: "v"})), InvalidArgument)


@given(
    st.timedeltas(
        min_value=datetime.timedelta(days=-2), max_value=datetime.timedelta(days=40000 * 2)
    )
)
def test_ttl_is_a_valid_nats_ttl_or_refused(value: datetime.timedelta) -> None:
    header = attempt(lambda: ttl_header(value))
    if isinstance(header, InvalidArgument):
        assert header.field == "ttl"
        seconds = value.total_seconds()
        assert seconds < 1 or seconds != int(seconds) or seconds > MAX_TTL
        return
    assert header.endswith("s")
    assert int(header[:-1]) == value.total_seconds() >= 1
