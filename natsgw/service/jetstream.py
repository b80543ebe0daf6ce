"""JetStream streams, consumers and messages (issue: JetStream through the gateway)."""

from __future__ import annotations

from natsgw.service.base import Handlers


class JetStreamHandlers(Handlers):
    """Not implemented yet: the generated base answers UNIMPLEMENTED."""
