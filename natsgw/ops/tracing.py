"""Trace context across the gateway: W3C ``traceparent`` in, NATS headers out, optional spans.

A caller's ``traceparent`` (and ``tracestate``) gRPC metadata is copied into the headers of the
NATS messages its call publishes (Publish, PublishBatch, Request, PublishToStream,
PublishToStreamBatch), unless a message already carries its own. Headers travel with the message,
so whoever receives it (Subscribe, QueueSubscribe, Consume, PullMessages, a Request's reply) sees
the same trace: a trace crosses the gateway and NATS.

With ``opentelemetry-api`` installed (``pip install 'natsgw[tracing]'``) every RPC also gets a
server span, child of the caller's ``traceparent``, and the messages carry that span's context,
once an SDK is configured. Without it nothing is imported or created. A call without
``traceparent`` costs one metadata lookup, never a per-message pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from grpclib.const import Status

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

try:  # optional: spans only when the OpenTelemetry API is installed
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _tracer: Any = _otel_trace.get_tracer("natsgw")
    _propagator: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - depends on the environment
    _tracer = None
    _propagator = None


def _configured() -> bool:
    """False while the API is installed without an SDK: every span would be a no-op (~3 µs a
    call for nothing). An SDK set up later (``set_tracer_provider``) turns spans on at once."""
    return not (
        isinstance(_tracer, _otel_trace.ProxyTracer)
        and isinstance(_otel_trace.get_tracer_provider(), _otel_trace.ProxyTracerProvider)
    )


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def incoming(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The call's valid W3C trace headers (empty when it sent none or a malformed one)."""
    parent = _text(metadata.get(TRACEPARENT)).strip().lower()
    if not parent or not _TRACEPARENT_RE.fullmatch(parent):
        return {}
    found = {TRACEPARENT: parent}
    state = _text(metadata.get(TRACESTATE)).strip()
    if state and len(state) <= 512:
        found[TRACESTATE] = state
    return found


class CallTrace:
    """One call's trace: its span (when OpenTelemetry is there) and the headers to propagate."""

    __slots__ = ("headers", "span")

    def __init__(self, headers: dict[str, str], span: Any) -> None:
        self.headers = headers
        self.span = span

    def end(self, status: Status) -> None:
        if self.span is None:
            return
        self.span.set_attribute("rpc.grpc.status_code", status.value)
        if status is not Status.OK:
            self.span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, status.name))
        self.span.end()


def on_request(rpc: str, request: Any, metadata: Mapping[str, Any]) -> CallTrace | None:
    """Start the call's trace and stamp its context on the messages ``request`` publishes."""
    headers = incoming(metadata)
    span = None
    if _tracer is not None and _configured():
        parent = _propagator.extract(headers) if headers else None
        span = _tracer.start_span(
            f"isa.nats.NATSService/{rpc}",
            context=parent,
            kind=_otel_trace.SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "isa.nats.NATSService",
                "rpc.method": rpc,
            },
        )
        if span.get_span_context().is_valid:
            carrier: dict[str, str] = {}
            _propagator.inject(carrier, context=_otel_trace.set_span_in_context(span))
            headers = carrier or headers
    if not headers:
        return CallTrace(headers, span) if span is not None else None
    stamp(request, headers)
    return CallTrace(headers, span)


def stamp(request: Any, trace_headers: Mapping[str, str]) -> None:
    """Add the trace headers to every message the request publishes that has none of its own.

    Batch items may be upb messages (natsgw.wire.items): their headers are a upb map, which is
    a MutableMapping like the dataclasses' dict.
    """
    single = getattr(request, "headers", None)
    if isinstance(single, MutableMapping):
        _add(single, trace_headers)
    messages = getattr(request, "messages", None)
    if isinstance(messages, list):
        for message in messages:
            own = getattr(message, "headers", None)
            if isinstance(own, MutableMapping):
                _add(own, trace_headers)


def _add(headers: MutableMapping[str, str], trace_headers: Mapping[str, str]) -> None:
    if TRACEPARENT not in headers and TRACEPARENT.title() not in headers:
        headers.update(trace_headers)
