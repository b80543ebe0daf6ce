"""check_subject: the printable-ASCII fast path decides exactly as the character-by-character
check (the long way is the reference: it is what every other subject takes)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw.errors import InvalidArgument
from natsgw.tenancy.namespace import check_subject


def reference(subject: str, wildcards: bool) -> bool:
    """The rules, written out plainly: True when the subject is acceptable."""
    if not subject:
        return False
    for ch in subject:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            return False
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            return False
        if wildcards and token == "*":
            continue
        if wildcards and token == ">":
            if index != len(tokens) - 1:
                return False
            continue
        if "*" in token or ">" in token:
            return False
    return True


def accepted(subject: str, wildcards: bool) -> bool:
    try:
        check_subject(subject, "subject", wildcards=wildcards)
    except InvalidArgument:
        return False
    return True


@pytest.mark.parametrize(
    "subject",
    ["a", "a.b", "orders.created", ".a", "a.", "a..b", "a b", "a\tb", "a\x7fb", "a\x00",
     "a*b", "a.*", "a.>", ">", "a.>.b", "ü.b", "a\u2028b", "a\u00a0b", "a\ud800", "~!@#$%^&()"],
)  # fmt: skip
@pytest.mark.parametrize("wildcards", [False, True])
def test_known_subjects(subject: str, wildcards: bool) -> None:
    assert accepted(subject, wildcards) == reference(subject, wildcards)


@given(st.text(alphabet=st.sampled_from("ab.*> \t\x7f\x1fé\u2028"), max_size=12), st.booleans())
def test_any_subject_is_judged_as_the_rules_say(subject: str, wildcards: bool) -> None:
    assert accepted(subject, wildcards) == reference(subject, wildcards)
