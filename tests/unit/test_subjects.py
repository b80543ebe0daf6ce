"""NATS wildcard matching (natsgw.tenancy.subjects), checked against the server's rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw.tenancy.subjects import captured_by, subject_matches


@pytest.mark.parametrize(
    ("subject", "pattern", "expected"),
    [
        ("a", "a", True),
        ("a.b", "a.b", True),
        ("a.b", "a", False),
        ("a", "a.b", False),
        ("a.b", "a.*", True),
        ("a.b.c", "a.*", False),
        ("a.b.c", "a.*.c", True),
        ("a.b.d", "a.*.c", False),
        ("a.b", "a.>", True),
        ("a.b.c.d", "a.>", True),
        ("a", "a.>", False),
        ("a", ">", True),
        ("a.b", "*.>", True),
        ("a", "*.>", False),
        ("ab", "a", False),
        ("a.bc", "a.b", False),
        ("a.b", "*.*", True),
        ("natsgw.uA.orders.new", "natsgw.uA.orders.>", True),
        ("natsgw.uB.orders.new", "natsgw.uA.orders.>", False),
        ("", "a", False),
        ("a", "", False),
        ("a..b", "a.*.b", False),
    ],
)
def test_subject_matches(subject: str, pattern: str, expected: bool) -> None:
    assert subject_matches(subject, pattern) is expected


def test_captured_by_any() -> None:
    assert captured_by("x.y", ["a.>", "x.*"])
    assert not captured_by("x.y.z", ["a.>", "x.*"])
    assert not captured_by("x", [])


tokens = st.text(alphabet="abc", min_size=1, max_size=2)


@given(st.lists(tokens, min_size=1, max_size=5))
def test_a_subject_matches_itself_and_full_wildcards(parts: list[str]) -> None:
    subject = ".".join(parts)
    assert subject_matches(subject, subject)
    assert subject_matches(subject, ">")
    assert subject_matches(subject, ".".join("*" for _ in parts))
    assert not subject_matches(subject, ".".join("*" for _ in parts) + ".*")


@given(st.lists(tokens, min_size=2, max_size=5), st.integers(min_value=1, max_value=4))
def test_gt_matches_every_longer_subject_with_that_prefix(parts: list[str], cut: int) -> None:
    cut = min(cut, len(parts) - 1)
    prefix = ".".join(parts[:cut])
    assert subject_matches(".".join(parts), f"{prefix}.>")
    assert not subject_matches(prefix, f"{prefix}.>")
