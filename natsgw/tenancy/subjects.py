"""NATS subject wildcard matching, as the server does it. Pure: no I/O, no NATS client."""

from __future__ import annotations

from collections.abc import Iterable


def subject_matches(subject: str, pattern: str) -> bool:
    """Whether the literal ``subject`` is captured by ``pattern``.

    Tokens are separated by ``.``; ``*`` matches exactly one token, ``>`` (last token only)
    matches one or more remaining tokens. Everything else compares literally, token by token.
    """
    if not subject or not pattern:
        return False
    s_tokens = subject.split(".")
    p_tokens = pattern.split(".")
    for index, p in enumerate(p_tokens):
        if p == ">" and index == len(p_tokens) - 1:
            return len(s_tokens) > index
        if index >= len(s_tokens):
            return False
        s = s_tokens[index]
        if not s:
            return False
        if p != "*" and p != s:
            return False
    return len(s_tokens) == len(p_tokens)


def captured_by(subject: str, patterns: Iterable[str]) -> bool:
    """Whether any of ``patterns`` captures ``subject``."""
    return any(subject_matches(subject, p) for p in patterns)
