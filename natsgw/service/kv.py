"""Key-Value store on NATS JetStream KV."""

from __future__ import annotations

from natsgw.service.base import Handlers


class KeyValueHandlers(Handlers):
    """Not implemented yet: the generated base answers UNIMPLEMENTED."""
