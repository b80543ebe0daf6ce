"""GetStatistics and GetStreamStats."""

from __future__ import annotations

from natsgw.service.base import Handlers


class StatisticsHandlers(Handlers):
    """Not implemented yet: the generated base answers UNIMPLEMENTED."""
