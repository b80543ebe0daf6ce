"""The tenancy mapping is the security boundary: injective, contained, valid and reversible."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from natsgw.errors import InvalidArgument
from natsgw.tenancy import (
    MAX_NAME_BYTES,
    MAX_SUBJECT_BYTES,
    Namespace,
    Tenant,
    TenantKind,
    escape_id,
    tenant_key,
    unescape_id,
)

settings.register_profile("ci", max_examples=300, deadline=None)
settings.load_profile("ci")

# Ids shaped like the ones clients really send, plus hostile ones.
REAL_IDS = [
    "test-user-1700000000",
    "auth0|5f7c8ec7c33c6c004bbafe82",
    "alice@example.com",
    "4f1c2d7e-8b9a-4c3d-9e2f-0a1b2c3d4e5f",
    "a.b",
    "a-b",
    "a_b",
    "*",
    ">",
    "user.*.x",
    "Ünïcødé ☃",
    "u",
    "o",
]
ids = st.one_of(st.sampled_from(REAL_IDS), st.text(min_size=1, max_size=40))
kinds = st.sampled_from(list(TenantKind))
tenants = st.builds(Tenant, kinds, ids)

SPECIAL = ["*", ">", ".", "-", "_", " ", "$", "é", "☃", "\t"]
token_chars = st.one_of(
    st.sampled_from(["a", "b", "Z", "0", "-", "_", "$", "é", "☃", "|", "@"]),
    st.characters(blacklist_categories=("Cs",)),  # type: ignore[arg-type]  # Literal in hypothesis
)
tokens = st.text(token_chars, min_size=0, max_size=8)
subjects = st.builds(".".join, st.lists(tokens, min_size=0, max_size=5))
patterns = st.builds(
    ".".join,
    st.lists(st.one_of(tokens, st.just("*"), st.just(">")), min_size=0, max_size=5),
)
names = st.text(st.one_of(st.sampled_from([*SPECIAL, "a", "B", "7"]), st.characters()), max_size=30)

# Inputs NATS would accept, with the characters that broke the original concatenation scheme.
_ok_chars = st.one_of(
    st.sampled_from(["a", "Z", "0", "-", "_", "$", "|", "@", "é", "☃", "u", "o"]),
    st.characters(
        blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=".*>/\\"
    ),
)
good_tokens = st.text(_ok_chars, min_size=1, max_size=8)
good_subjects = st.builds(".".join, st.lists(good_tokens, min_size=1, max_size=5))
good_names = st.text(_ok_chars, min_size=1, max_size=30)
good_patterns = st.builds(
    lambda toks, tail: ".".join(toks + tail),
    st.lists(st.one_of(good_tokens, st.just("*")), min_size=1, max_size=4),
    st.sampled_from([[], [">"]]),
)
# At most 12 characters per code point once escaped: 10 code points always fit the key limit.
good_ids = st.one_of(st.sampled_from(REAL_IDS), st.text(min_size=1, max_size=10))
good_buckets = st.text(st.sampled_from("abcXYZ019_-"), min_size=1, max_size=30)

RESERVED_PREFIXES = ("$JS", "$KV", "$O", "$SYS", "_INBOX")


def nats_match(pattern: str, subject: str) -> bool:
    """NATS subject matching, written independently of the code under test."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def mapped_or_none(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except InvalidArgument:
        return None


def namespace_or_none(tenant: Tenant) -> Namespace | None:
    try:
        return Namespace(tenant)
    except InvalidArgument:
        return None


def is_valid_nats_subject(subject: str, *, wildcards: bool) -> bool:
    if not subject or len(subject.encode()) > MAX_SUBJECT_BYTES:
        return False
    if re.search(r"\s", subject):
        return False
    toks = subject.split(".")
    for i, tok in enumerate(toks):
        if not tok:
            return False
        if tok in ("*", ">") and (not wildcards or (tok == ">" and i != len(toks) - 1)):
            return False
    return True


# -- the tenant key -------------------------------------------------------------------------------


@given(st.text())
def test_escape_is_reversible_and_safe(raw: str) -> None:
    escaped = escape_id(raw)
    assert re.fullmatch(r"[A-Za-z0-9_]*", escaped)
    assert unescape_id(escaped) == raw


@given(st.text(), st.text())
def test_escape_is_injective(a: str, b: str) -> None:
    assume(a != b)
    assert escape_id(a) != escape_id(b)


@given(tenants, tenants)
def test_tenant_keys_are_injective(a: Tenant, b: Tenant) -> None:
    assume(a != b)
    ka, kb = mapped_or_none(tenant_key, a), mapped_or_none(tenant_key, b)
    assume(ka is not None and kb is not None)
    assert ka != kb


def test_real_ids_are_accepted() -> None:
    for raw in REAL_IDS:
        ns = Namespace(Tenant.user(raw))
        assert ns.subject("orders.created").startswith("natsgw.u")
        assert ns.stream("orders").startswith("natsgw-u")


@pytest.mark.parametrize("raw", ["", "x" * 200])
def test_unusable_ids_are_refused(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="user_id"):
        Namespace(Tenant.user(raw))


# -- subjects -------------------------------------------------------------------------------------


@given(tenants, good_subjects, tenants, good_subjects)
def test_subject_mapping_is_injective(ta: Tenant, sa: str, tb: Tenant, sb: str) -> None:
    assume((ta, sa) != (tb, sb))
    na, nb = namespace_or_none(ta), namespace_or_none(tb)
    assume(na is not None and nb is not None)
    ma, mb = mapped_or_none(na.subject, sa), mapped_or_none(nb.subject, sb)
    assume(ma is not None and mb is not None)
    assert ma != mb


@given(tenants, st.one_of(subjects, good_subjects))
def test_subjects_are_valid_or_refused_and_reversible(tenant: Tenant, subject: str) -> None:
    ns = namespace_or_none(tenant)
    assume(ns is not None)
    mapped = mapped_or_none(ns.subject, subject)
    if mapped is None:
        return
    assert is_valid_nats_subject(mapped, wildcards=False)
    assert ns.from_subject(mapped) == subject


@given(
    tenants,
    st.one_of(patterns, good_patterns, good_subjects),
    tenants,
    st.one_of(subjects, good_subjects),
)
def test_patterns_never_reach_another_tenant(
    owner: Tenant, pattern: str, other: Tenant, subject: str
) -> None:
    """Whatever a tenant subscribes to, filters on or replies to stays in its namespace."""
    mine, theirs = namespace_or_none(owner), namespace_or_none(other)
    assume(mine is not None and theirs is not None)
    mapped_pattern = mapped_or_none(mine.pattern, pattern)
    if mapped_pattern is None:
        return
    assert is_valid_nats_subject(mapped_pattern, wildcards=True)
    assert mine.from_subject(mapped_pattern) == pattern
    for reserved in RESERVED_PREFIXES:
        assert not nats_match(mapped_pattern, f"{reserved}.API.x.y")
        assert not nats_match(mapped_pattern, reserved)
    target = mapped_or_none(theirs.subject, subject)
    if target is not None and owner != other:
        assert not nats_match(mapped_pattern, target)


@given(tenants, st.one_of(patterns, good_subjects))
def test_patterns_match_only_inside_the_namespace(tenant: Tenant, pattern: str) -> None:
    ns = namespace_or_none(tenant)
    assume(ns is not None)
    mapped = mapped_or_none(ns.pattern, pattern)
    assume(mapped is not None)
    assert mapped.startswith(ns.subject_prefix)
    # Every wildcard sits after the two literal tokens (root, tenant key).
    first_two = mapped.split(".")[:2]
    assert "*" not in first_two and ">" not in first_two


@given(tenants, st.text(min_size=1, max_size=20))
def test_request_inboxes_stay_inside(tenant: Tenant, token: str) -> None:
    ns = namespace_or_none(tenant)
    assume(ns is not None)
    inbox = mapped_or_none(ns.inbox, token)
    if inbox is None:
        return
    assert inbox.startswith(ns.subject_prefix + "_INBOX.")
    assert not inbox.startswith("_INBOX")


def test_publish_subjects_refuse_wildcards() -> None:
    ns = Namespace(Tenant.user("alice"))
    for bad in ["*", ">", "a.*", "a.>", "a*", "a.b>c", "", "a..b", ".a", "a.", "a b", "a\tb"]:
        with pytest.raises(InvalidArgument, match="subject"):
            ns.subject(bad)
    for bad in ["a.>.b", "a*", "", "a b"]:
        with pytest.raises(InvalidArgument, match="subject"):
            ns.pattern(bad)
    assert ns.pattern("a.*.>") == "natsgw.ualice.a.*.>"


# -- named resources ------------------------------------------------------------------------------


@given(tenants, good_names, tenants, good_names)
def test_stream_names_are_injective(ta: Tenant, a: str, tb: Tenant, b: str) -> None:
    assume((ta, a) != (tb, b))
    na, nb = namespace_or_none(ta), namespace_or_none(tb)
    assume(na is not None and nb is not None)
    ma, mb = mapped_or_none(na.stream, a), mapped_or_none(nb.stream, b)
    assume(ma is not None and mb is not None)
    assert ma != mb


@given(tenants, st.one_of(names, good_names), tenants)
def test_names_are_valid_reversible_and_owned(tenant: Tenant, name: str, other: Tenant) -> None:
    ns = namespace_or_none(tenant)
    assume(ns is not None)
    for mapper in (ns.stream, ns.kv_bucket, ns.object_bucket):
        mapped = mapped_or_none(mapper, name)
        if mapped is None:
            continue
        assert len(mapped.encode()) <= MAX_NAME_BYTES
        assert not re.search(r"[\s.*>/\\]", mapped)
        assert ns.from_name(mapped) == name
        theirs = namespace_or_none(other)
        if theirs is not None and other != tenant:
            assert theirs.from_name(mapped) is None
    for mapper in (ns.kv_bucket, ns.object_bucket):
        bucket = mapped_or_none(mapper, name)
        if bucket is not None:
            assert re.fullmatch(r"[A-Za-z0-9_-]+", bucket)


@given(tenants)
def test_backing_streams_of_buckets_are_not_the_tenants_streams(tenant: Tenant) -> None:
    ns = namespace_or_none(tenant)
    assume(ns is not None)
    assert ns.from_name("KV_" + ns.kv_bucket("cache")) is None
    assert ns.from_name("OBJ_" + ns.object_bucket("files")) is None


def test_bad_names_are_refused_with_the_field() -> None:
    ns = Namespace(Tenant.user("alice"))
    for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b", "x" * 300]:
        with pytest.raises(InvalidArgument, match="stream_name"):
            ns.stream(bad)
    for bad in ["a.b", "é", "a b", ""]:
        with pytest.raises(InvalidArgument, match="bucket"):
            ns.kv_bucket(bad)


@given(st.builds(Tenant, kinds, good_ids), good_subjects, good_patterns, good_names, good_buckets)
def test_valid_inputs_are_never_refused(
    tenant: Tenant, subject: str, pattern: str, name: str, bucket: str
) -> None:
    """The other properties skip refused inputs, so refusing too much must fail here."""
    ns = Namespace(tenant)
    assert ns.from_subject(ns.subject(subject)) == subject
    assert ns.from_subject(ns.pattern(pattern)) == pattern
    assert ns.from_subject(ns.pattern(subject)) == subject
    assert ns.from_name(ns.stream(name)) == name
    assert ns.consumer(name) == name
    assert ns.from_name(ns.kv_bucket(bucket)) == bucket
    assert ns.from_name(ns.object_bucket(bucket)) == bucket
