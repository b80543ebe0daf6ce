"""Object store on NATS JetStream Object Store."""

from __future__ import annotations

from natsgw.service.base import Handlers


class ObjectStoreHandlers(Handlers):
    """Not implemented yet: the generated base answers UNIMPLEMENTED."""
