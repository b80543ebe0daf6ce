"""structlog set-up, once at start: JSON for machines, console rendering for people.

``NATSGW_LOG_FORMAT=auto`` (the default) picks the console renderer when stderr is a terminal and
JSON otherwise, so ``natsgw serve`` typed by a person reads well and the same command under a
process manager or in a container emits one JSON object per line.

On the console the audit trail (one event per state-changing call, meant for Loki) is quiet:
successful calls are left out unless ``NATSGW_LOG_LEVEL=debug``, and refused or failed ones are
shown with only the fields a person reads. JSON output always carries every audit event.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from natsgw.ops.secrets import redact_event

#: The audit fields worth a person's attention on a terminal.
_CONSOLE_AUDIT_FIELDS = ("rpc", "status", "reason", "tenant", "resource", "latency_ms")


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``auto`` becomes ``console`` on a terminal and ``json`` everywhere else."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def _quiet_audit(verbose: bool) -> structlog.types.Processor:
    def processor(
        _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event.get("event") != "audit":
            return event
        if event.get("outcome") == "ok" and not verbose:
            raise structlog.DropEvent
        kept = {k: event[k] for k in _CONSOLE_AUDIT_FIELDS if event.get(k) not in (None, "", {})}
        base = {k: event[k] for k in ("level", "timestamp") if k in event}
        return {"event": f"audit {event.get('outcome', '')}".strip(), **base, **kept}

    return processor


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> str:
    """Configure structlog for the whole process; returns the format chosen (json or console)."""
    out = sys.stderr if stream is None else stream
    chosen = resolve_format(fmt, out)
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_event,  # after the traceback is text, before rendering: masks it too
    ]
    if chosen == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(_quiet_audit(verbose=level == "debug"))
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    return chosen
