"""How per-item work is paced: how often a loop gives the event loop back, and how many
deliveries ride in one streamed response.

A slice of :data:`YIELD_EVERY` items takes a few milliseconds, so one large call never stalls the
other tenants' calls for long. Shared by the service objects, imported by nothing else.
"""

from __future__ import annotations

from natsgw.errors import InvalidArgument

YIELD_EVERY = 256


def max_batch(value: int, limit: int) -> int:
    """Messages per response for a stream's ``max_batch`` (0: one, as before).

    A preference, not a bound on what the client sends: a value above NATSGW_MAX_BATCH_MESSAGES
    is capped to it (the bound on incoming batches, so no bigger batch goes out than a client may
    send), so a client's default keeps working against a gateway configured lower.
    """
    if value < 0:
        raise InvalidArgument("max_batch", f"must be 0 or more (got {value})")
    return min(max(value, 1), limit)
