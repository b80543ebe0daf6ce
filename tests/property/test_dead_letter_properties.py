"""The dead-letter relay's mappings (issue #18 item 1): a dead-letter target is always a stream
of the SAME tenant as the consumer's stream, whatever name or metadata it starts from."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from natsgw.errors import InvalidArgument
from natsgw.service.dead_letters import copy_subject
from natsgw.tenancy import Namespace, Tenant, namespace_of_stream
from tests.property.test_tenancy_properties import (
    good_names,
    good_subjects,
    names,
    subjects,
    tenants,
)


def _ns(tenant: Tenant) -> Namespace:
    try:
        return Namespace(tenant)
    except InvalidArgument:
        assume(False)
        raise


def _stream(ns: Namespace, name: str) -> str:
    try:
        return ns.stream(name)
    except InvalidArgument:
        assume(False)
        raise


@given(tenants, good_names)
def test_a_tenant_stream_maps_back_to_its_namespace(tenant: Tenant, name: str) -> None:
    ns = _ns(tenant)
    assert namespace_of_stream(_stream(ns, name)) == ns


@given(st.one_of(names, st.text()))
def test_any_name_maps_to_its_owner_or_nobody(raw: str) -> None:
    """Whatever a NATS stream is called, the namespace found owns it (by prefix)."""
    found = namespace_of_stream(raw)
    if found is not None:
        assert raw.startswith(found.name_prefix)
        assert found.from_name(raw)


@given(tenants, good_names, st.one_of(names, good_names), tenants)
def test_dead_letter_targets_stay_in_the_source_tenant(
    owner: Tenant, source: str, target: str, other: Tenant
) -> None:
    """The relay maps the consumer's dead-letter name relative to its stream: the target is the
    owner's, never another tenant's, even when the name is another tenant's NATS name."""
    ns = _ns(owner)
    source_stream = _stream(ns, source)
    found = namespace_of_stream(source_stream)
    assert found == ns
    for name in (target, _stream(_ns(other), "dlq")):
        try:
            mapped = found.stream(name)
        except InvalidArgument:
            continue
        assert namespace_of_stream(mapped) == ns
        if _ns(other) != ns:
            assert not mapped.startswith(_ns(other).name_prefix)


@given(tenants, good_subjects, st.one_of(subjects, good_subjects))
def test_copy_subjects_stay_in_the_namespace(tenant: Tenant, prefix: str, original: str) -> None:
    ns = _ns(tenant)
    try:
        target = ns.pattern(prefix + ".>")
        source = ns.subject(original)
    except InvalidArgument:
        assume(False)
        raise
    copied = copy_subject(ns, [target], source)
    if copied is not None:
        assert ns.from_subject(copied) == f"{prefix}.{original}"
    literal = ns.subject(prefix)
    assert copy_subject(ns, [literal], source) == literal
