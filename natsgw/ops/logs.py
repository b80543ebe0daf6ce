"""structlog set-up, once at start: JSON for machines, console rendering for people.

``NATSGW_LOG_FORMAT=auto`` (the default) picks the console renderer when stderr is a terminal and
JSON otherwise, so ``natsgw serve`` typed by a person reads well and the same command under a
process manager or in a container emits one JSON object per line.

On the console the audit trail (one event per state-changing call, meant for Loki) is quiet:
successful calls are left out unless ``NATSGW_LOG_LEVEL=debug``, and refused or failed ones are
shown with only the fields a person reads. JSON output always carries every audit event.

Libraries log through the standard library (grpclib's "Health check ... status changed", nats-py,
asyncio's "Task exception was never retrieved", Python warnings); their records are rendered by
the same processors, so every line on stderr has one format.
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

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


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
    renderer: structlog.types.Processor
    tail: list[structlog.types.Processor] = []
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        tail.append(_quiet_audit(verbose=level == "debug"))
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        # Secrets are masked after the traceback is text, before either renderer sees the event.
        processors=[*_SHARED, structlog.processors.format_exc_info, redact_event, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() makes two: with PYTHONUNBUFFERED two system calls), so
        # the lines of workers sharing one stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(renderer, numeric, out)
    return chosen


def _route_stdlib_logging(renderer: structlog.types.Processor, level: int, out: TextIO) -> None:
    """Replace the root logger's handlers with one that renders through structlog."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *_SHARED,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_event,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # grpclib logs every call a client cancelled ("Request was cancelled: Stream reset by remote
    # party") or let run past its deadline at info: one line per client disconnect, nothing an
    # operator acts on. Shown with NATSGW_LOG_LEVEL=debug; its errors still always are.
    quiet = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.getLogger("grpclib.server").setLevel(quiet)
    logging.captureWarnings(True)
