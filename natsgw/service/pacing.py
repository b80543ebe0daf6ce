"""How often a per-item loop (batches, acks) gives the event loop back.

A slice of :data:`YIELD_EVERY` items takes a few milliseconds, so one large call never stalls the
other tenants' calls for long. Shared by the service objects, imported by nothing else.
"""

from __future__ import annotations

YIELD_EVERY = 256
