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

No credential reaches a line, at any level: hpack's and h2's debug records (every decoded header,
``authorization`` included) are not emitted, and :func:`redact_credentials`, the last processor
before rendering, masks values of ``authorization``/``token``/``secret``/``password``-like keys
and any ``Bearer``/``Basic`` credential inside text. A library's traceback (grpclib's "Server
error" for each request with malformed metadata, say) is written at most once per
``(logger, message, exception type)`` and minute, the next one saying how many were suppressed
(:class:`TracebackBudget`), so a client sending bad bytes in a loop cannot flood the log.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from natsgw.ops.secrets import redact_event

#: Libraries whose debug records quote HTTP/2 headers (credentials included): never below INFO.
_HEADER_LOGGERS = ("hpack", "h2")
#: Keys whose values are credentials, whoever logs them.
_CREDENTIAL_KEY = re.compile(
    r"(authorization|cookie|token|secret|password|passwd|api[_-]?key)$", re.IGNORECASE
)
#: A credential inside text: ``Bearer <token>`` / ``Basic <base64>`` (header dumps, messages).
_CREDENTIAL_TEXT = re.compile(r"\b((?i:bearer)\s+|Basic\s+(?=[A-Za-z0-9+/]{8}))[^\s'\",)\]}]+")
_MASK = "***"


def _masked_text(text: str) -> str:
    if "earer" not in text and "asic" not in text and "EARER" not in text:
        return text
    return _CREDENTIAL_TEXT.sub(lambda m: f"{m.group(1)}{_MASK}", text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return _masked_text(value)
    if isinstance(value, dict):
        return {
            k: (_MASK if isinstance(k, str) and _CREDENTIAL_KEY.search(k) else _masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    return value


def redact_credentials(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor, the last before rendering: no credential in any key or text."""
    for key, value in event.items():
        if _CREDENTIAL_KEY.search(key) and value not in (None, "", 0):
            event[key] = _MASK
        elif isinstance(value, str | dict | list | tuple):
            event[key] = _masked(value)
    return event


class TracebackBudget(logging.Filter):
    """Lets a library's records with a traceback through at most once per ``(logger, message,
    exception type)`` and ``interval``; the next one carries ``suppressed``: how many were not.

    natsgw's own loggers are left alone (they log tracebacks only for its own failures).
    """

    def __init__(
        self,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._seen: dict[tuple[str, str, str], list[float]] = {}  # key -> [logged at, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.name.startswith("natsgw"):
            return True
        exc_type = record.exc_info[0] if isinstance(record.exc_info, tuple) else None
        key = (record.name, str(record.msg), exc_type.__name__ if exc_type else "")
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._interval:
            seen[1] += 1
            return False
        if len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            record.suppressed = int(seen[1])
        return True


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
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            redact_event,
            *tail,
            redact_credentials,
            renderer,
        ],
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
                redact_credentials,
                renderer,
            ],
        )
    )
    handler.addFilter(TracebackBudget())
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
    for name in _HEADER_LOGGERS:  # their debug records quote every header, credentials included
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    logging.captureWarnings(True)
