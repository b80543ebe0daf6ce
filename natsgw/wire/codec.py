"""The wire codec: where bytes become the typed dataclasses handlers work with, and back.

Handlers see betterproto2 dataclasses, except the items of big repeated fields whose classes are
in natsgw.wire.items.UPB_ITEMS (batch messages): those stay the upb messages they were parsed as,
read through the Protocols of that module (a dataclass per item was half of PublishBatch's CPU).
How messages are (de)serialized is decided here and nowhere else, so the codec can change
without touching a handler:

- :class:`UpbBridge` parses with Google's upb ``protobuf`` classes (C, ~1 µs) and converts field by
  field into the dataclass; encoding goes the other way. Measured on this machine for a 260-byte
  ``PublishRequest``: ~11 µs per serialize+parse round trip against ~160 µs for betterproto2's
  pure-Python codec. It also writes negative fractional Durations correctly, which betterproto2
  0.10's encoder does not.
- Messages the bridge does not know (grpclib's own health and reflection services use upb
  classes directly) pass through :class:`grpclib.encoding.proto.ProtoCodec` unchanged.

Requests are bounded here, before they are expanded: the upb parse is C and costs ~90 bytes per
item for an instant, while the dataclasses it would become cost ~400 and live for the call. So
every repeated and map field's length is checked on the upb message (:class:`RepeatedLimits`)
before that field is turned into dataclasses; requests above 64 KiB are first counted on the
wire (top-level fields, stopping at the first one over its limit), so a million-item batch is
refused before upb builds anything. Bytes that do not parse answer INVALID_ARGUMENT
(:class:`~natsgw.errors.UndecodableRequest`); the call pipeline, which knows the peer, logs them
through :class:`natsgw.pipeline.rejects.RejectLog` at most once per peer host and interval.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import keyword
from collections.abc import Callable, Collection
from typing import Any, TypeVar, cast

import betterproto2
from google.protobuf.message import DecodeError
from grpclib.encoding.proto import ProtoCodec

from natsgw.compat.betterproto2 import field_classes
from natsgw.errors import InvalidArgument, UndecodableRequest

_UTC = datetime.UTC
_Converter = Callable[[Any], Any]
_M = TypeVar("_M")


@dataclasses.dataclass(frozen=True, slots=True)
class RepeatedLimits:
    """Most items one request may carry in a repeated or map field (each names its setting)."""

    batch_messages: int = 1000
    ack_tokens: int = 1000
    headers: int = 256
    list_items: int = 1024

    def of(self, field: str, is_map: bool) -> tuple[int, str]:
        if is_map:  # headers, metadata
            return self.headers, "NATSGW_MAX_HEADERS"
        if field == "messages":  # PublishBatch, PublishToStreamBatch
            return self.batch_messages, "NATSGW_MAX_BATCH_MESSAGES"
        if field == "ack_tokens":
            return self.ack_tokens, "NATSGW_MAX_ACK_TOKENS"
        return self.list_items, "NATSGW_MAX_LIST_ITEMS"  # stream subjects, anything new


@dataclasses.dataclass(frozen=True, slots=True)
class _Bound:
    field: str
    limit: int
    setting: str


@dataclasses.dataclass(slots=True)
class _FieldPlan:
    name: str
    to_dc: _Converter | None  # upb field value -> dataclass value (None: copy as is)
    to_upb: _Converter | None  # dataclass value -> upb constructor argument
    presence: bool  # optional message field: absent reads as None
    post_set: Callable[[Any, Any], None] | None  # for Timestamp/Duration: set after construction
    bound: _Bound | None = None  # repeated/map: most items a request may carry


class UpbBridge:
    """Converts between betterproto2 dataclasses and upb messages of the same .proto."""

    def __init__(
        self,
        upb_module: Any,
        pool: Any,
        limits: RepeatedLimits | None = None,
        upb_items: Collection[type[Any]] = (),
    ) -> None:
        self._upb_module = upb_module
        self._pool = pool
        self._limits = limits
        #: Dataclasses whose instances in a repeated field stay upb messages (natsgw.wire.items).
        self._upb_items = frozenset(upb_items)
        self._item_checks: dict[type[Any], tuple[tuple[str, _Bound | None, _Converter | None], ...]]
        self._item_checks = {}
        self._pairs: dict[type[betterproto2.Message], type[Any]] = {}
        self._plans: dict[type[betterproto2.Message], list[_FieldPlan]] = {}
        self._bounds: dict[type[betterproto2.Message], tuple[_Bound, ...]] = {}
        #: Top-level request conversions, compiled on first use (:func:`_compile_converter`).
        self._converters: dict[type[Any], Callable[[Any], Any]] = {}
        #: Top-level answer conversions, compiled on first use (:func:`_compile_builder`).
        self._builders: dict[type[Any], Callable[[Any], Any]] = {}

    def register(self, cls: type[Any]) -> None:
        if cls in self._pairs:
            return
        # "type.googleapis.com/isa.nats.Outer.Inner" -> attribute path below the _pb2 module
        full_name = str(self._pool.type_to_url[cls]).rsplit("/", 1)[1]
        package = str(self._upb_module.DESCRIPTOR.package)
        upb_cls = self._upb_module
        for part in full_name[len(package) + 1 :].split("."):
            upb_cls = getattr(upb_cls, part)
        self._pairs[cls] = upb_cls
        self._plans[cls] = []  # placeholder: breaks recursion for self-referencing messages
        plans = [self._plan(cls, f) for f in dataclasses.fields(cls)]
        for plan, field in zip(plans, dataclasses.fields(cls), strict=True):
            if _many(field):
                plan.bound = self._bound(field)
        self._plans[cls] = plans
        self._bounds[cls] = tuple(p.bound for p in plans if p.bound is not None)
        # What expanding an item would check, for items left as upb: bounds, and conversions
        # that can refuse a value (a Timestamp beyond year 9999), in field order.
        self._item_checks[cls] = tuple(
            (p.name, p.bound, p.to_dc if p.post_set is not None else None)
            for p in plans
            if p.bound is not None or p.post_set is not None
        )

    def _bound(self, field: dataclasses.Field[Any]) -> _Bound:
        limits = self._limits or RepeatedLimits(2**62, 2**62, 2**62, 2**62)
        is_map = betterproto2.FieldMetadata.get(field).proto_type == betterproto2.TYPE_MAP
        return _Bound(field.name, *limits.of(field.name, is_map))

    def knows(self, cls: type[Any]) -> bool:
        return cls in self._pairs

    def _plan(self, cls: type[Any], field: dataclasses.Field[Any]) -> _FieldPlan:
        meta = betterproto2.FieldMetadata.get(field)
        name = field.name
        kind = meta.proto_type
        if kind == betterproto2.TYPE_MAP:
            assert meta.map_meta is not None
            if meta.map_meta[1].proto_type == betterproto2.TYPE_MESSAGE:
                raise NotImplementedError(f"{cls.__name__}.{name}: maps of messages")
            return _FieldPlan(name, dict, None, False, None)
        if kind == betterproto2.TYPE_ENUM:
            enum_cls = field_classes(cls)[name]
            if meta.repeated:
                return _FieldPlan(name, lambda v: [enum_cls(x) for x in v], list, False, None)
            return _FieldPlan(name, enum_cls, int, False, None)
        if kind != betterproto2.TYPE_MESSAGE:
            return _FieldPlan(name, list if meta.repeated else None, None, False, None)
        if meta.unwrap is not None:
            wrapped = meta.unwrap().__name__
            if wrapped == "Timestamp":
                return _FieldPlan(
                    name,
                    lambda v: v.ToDatetime(tzinfo=_UTC),
                    None,
                    True,
                    _set_timestamp,
                )
            if wrapped == "Duration":
                return _FieldPlan(
                    name, lambda v: v.ToTimedelta(), None, True, lambda sub, v: sub.FromTimedelta(v)
                )
            raise NotImplementedError(f"{cls.__name__}.{name}: wrapped {wrapped}")
        sub_cls = field_classes(cls)[name]
        self.register(sub_cls)
        if meta.repeated and sub_cls in self._upb_items:
            upb_sub = self._pairs[sub_cls]
            return _FieldPlan(
                name,
                lambda v: self._checked_items(sub_cls, v),
                lambda v: [x if isinstance(x, upb_sub) else self.to_upb(x) for x in v],
                False,
                None,
            )
        if meta.repeated:
            return _FieldPlan(
                name,
                lambda v: [self.to_dataclass(sub_cls, x) for x in v],
                lambda v: [self.to_upb(x) for x in v],
                False,
                None,
            )
        return _FieldPlan(name, lambda v: self.to_dataclass(sub_cls, v), self.to_upb, True, None)

    def to_dataclass(self, cls: type[Any], upb_msg: Any) -> Any:
        kwargs: dict[str, Any] = {}
        for plan in self._plans[cls]:
            if plan.presence and not upb_msg.HasField(plan.name):
                continue
            value = getattr(upb_msg, plan.name)
            bound = plan.bound  # every repeated field is counted before it is expanded
            if bound is not None and len(value) > bound.limit:
                raise _over_limit(upb_msg, bound, len(value))
            kwargs[plan.name] = value if plan.to_dc is None else plan.to_dc(value)
        return cls(**kwargs)

    def _checked_items(self, cls: type[Any], items: Any) -> list[Any]:
        """The upb items of a repeated field as a list, refused exactly as :meth:`to_dataclass`
        would refuse them (same bounds, same messages), without building a dataclass each."""
        out = list(items)
        checks = self._item_checks[cls]
        if checks:
            for item in out:
                for name, bound, convert in checks:
                    if bound is not None:
                        if len(getattr(item, name)) > bound.limit:
                            raise _over_limit(item, bound, len(getattr(item, name)))
                    elif item.HasField(name) and convert is not None:
                        convert(getattr(item, name))  # only to refuse what would not convert
        return out

    def to_upb(self, message: Any) -> Any:
        cls = type(message)
        kwargs: dict[str, Any] = {}
        late: list[tuple[_FieldPlan, Any]] = []
        for plan in self._plans[cls]:
            value = getattr(message, plan.name)
            if value is None:
                continue
            if plan.post_set is not None:
                late.append((plan, value))
            else:
                kwargs[plan.name] = value if plan.to_upb is None else plan.to_upb(value)
        upb_msg = self._pairs[cls](**kwargs)
        for plan, value in late:
            assert plan.post_set is not None
            plan.post_set(getattr(upb_msg, plan.name), value)
        return upb_msg

    def decode(self, data: bytes, cls: type[Any]) -> Any:
        upb_cls = self._pairs[cls]
        if len(data) > PRESCAN_ABOVE and self._bounds[cls]:
            self._prescan(cls, upb_cls, data)
        try:
            upb_msg = upb_cls.FromString(data)
        except DecodeError:
            raise UndecodableRequest(upb_cls.DESCRIPTOR.name) from None
        try:
            convert = self._converters.get(cls)
            if convert is None:
                convert = self._converters[cls] = _compile_converter(cls, self._plans[cls])
            return convert(upb_msg)
        except (ValueError, OverflowError) as exc:  # e.g. a Timestamp beyond year 9999
            if isinstance(exc, InvalidArgument):
                raise
            raise UndecodableRequest(upb_cls.DESCRIPTOR.name) from None

    def encode(self, message: Any) -> bytes:
        cls = type(message)
        build = self._builders.get(cls)
        if build is None:
            build = self._builders[cls] = _compile_builder(self._pairs[cls], self._plans[cls])
        return bytes(build(message).SerializeToString())

    def _prescan(self, cls: type[Any], upb_cls: Any, data: bytes) -> None:
        """Count the top-level repeated fields on the wire, stopping at the first one over its
        limit: a million-item batch is refused after reading ``limit`` tags, before upb builds
        a million messages (~90 bytes each)."""
        numbers = upb_cls.DESCRIPTOR.fields_by_name
        bounds = {numbers[b.field].number: b for b in self._bounds[cls]}
        over = _first_over_limit(data, {number: b.limit for number, b in bounds.items()})
        if over is not None:
            bound = bounds[over]
            raise InvalidArgument(
                f"{upb_cls.DESCRIPTOR.name}.{bound.field}",
                f"more than {bound.limit} items, above the limit of {bound.limit} "
                f"({bound.setting}); send fewer per call",
            )


def _compile_converter(cls: type[Any], plans: list[_FieldPlan]) -> Callable[[Any], Any]:
    """:meth:`UpbBridge.to_dataclass` for one class, as straight-line code: the same checks,
    conversions and refusals, without a loop over field plans or a kwargs dict per message
    (a 7-field PublishRequest: ~6.5 -> ~2.5 us; a unary request is decoded on every call).

    Built from the plans, so a field added to the .proto is converted like every other one.
    Enums are looked up in a table of their members (constructing one costs ~0.9 us).
    """
    env: dict[str, Any] = {"cls": cls, "_over_limit": _over_limit}
    body: list[str] = []
    args: list[str] = []
    for i, plan in enumerate(plans):
        name = plan.name
        plain = name.isidentifier() and not keyword.iskeyword(name)
        get = f"m.{name}" if plain else f"getattr(m, {name!r})"
        if plan.bound is not None:
            env[f"b{i}"] = plan.bound
            body += [
                f"    v{i} = {get}",
                f"    if len(v{i}) > b{i}.limit:",
                f"        raise _over_limit(m, b{i}, len(v{i}))",
            ]
            get = f"v{i}"
        convert = plan.to_dc
        if convert is None:
            value = get
        elif convert is dict:  # a map: most requests carry none
            value = f"(dict({get}) if len({get}) else {{}})"
        elif isinstance(convert, type) and issubclass(convert, enum.Enum):
            env[f"c{i}"] = convert
            env[f"t{i}"] = {member.value: member for member in convert}
            body.append(f"    e{i} = {get}")
            value = f"(t{i}[e{i}] if e{i} in t{i} else c{i}(e{i}))"
        else:
            env[f"c{i}"] = convert
            value = f"c{i}({get})"
        if plan.presence:
            body.append(f"    if m.HasField({name!r}):")
            body.append(f"        kw[{name!r}] = {value}")
        else:  # converted here, in field order, so refusals come in the same order
            body.append(f"    a{i} = {value}")
            args.append(f"{name}=a{i}" if plain else f"**{{{name!r}: a{i}}}")
    call = ", ".join([*args, "**kw"])
    exec("\n".join(["def convert(m):", "    kw = {}", *body, f"    return cls({call})"]), env)
    return cast(Callable[[Any], Any], env["convert"])


def _compile_builder(upb_cls: Any, plans: list[_FieldPlan]) -> Callable[[Any], Any]:
    """:meth:`UpbBridge.to_upb` for one class as straight-line code (same conversions; absent
    fields left out; Timestamps and Durations set after construction): an answer is encoded on
    every call."""
    env: dict[str, Any] = {"upb_cls": upb_cls}
    body: list[str] = []
    late: list[str] = []
    for i, plan in enumerate(plans):
        name = plan.name
        get = (
            f"m.{name}"
            if name.isidentifier() and not keyword.iskeyword(name)
            else (f"getattr(m, {name!r})")
        )
        body.append(f"    v{i} = {get}")
        if plan.post_set is not None:
            env[f"p{i}"] = plan.post_set
            late.append(f"    if v{i} is not None:")
            late.append(f"        p{i}(getattr(u, {name!r}), v{i})")
            continue
        value = f"v{i}"
        if plan.to_upb is not None:
            env[f"c{i}"] = plan.to_upb
            value = f"c{i}(v{i})"
        body.append(f"    if v{i} is not None:")
        body.append(f"        kw[{name!r}] = {value}")
    lines = ["def build(m):", "    kw = {}", *body, "    u = upb_cls(**kw)", *late, "    return u"]
    exec("\n".join(lines), env)
    return cast(Callable[[Any], Any], env["build"])


#: Room a request needs beside its payload (ids, subject, headers), so that a payload of exactly
#: NATSGW_MAX_MESSAGE_SIZE (the embedded server's max_payload) still fits in one gRPC message.
ENVELOPE_ALLOWANCE = 64 * 1024

#: Requests larger than this are pre-scanned on the wire before upb parses them (smaller ones
#: cannot hold enough items for the parse to matter: at most ~3 MB for an instant).
PRESCAN_ABOVE = 64 * 1024


#: Fields beside the counted ones the pre-scan reads before leaving a message to upb.
_SINGULAR_FIELDS_ALLOWANCE = 1024


def _first_over_limit(data: bytes, limits: dict[int, int]) -> int | None:
    """The first top-level field number seen more often than its limit in a serialized message,
    or None; stops quietly at anything malformed (upb then says what is wrong).

    The walk itself is bounded: a legal message has at most the limits' sum plus its singular
    fields, so after that many fields it stops and leaves the rest to upb (which overwrites a
    repeated singular field rather than expanding it) instead of walking millions in Python.
    """
    counts = dict.fromkeys(limits, 0)
    budget = sum(limits.values()) + _SINGULAR_FIELDS_ALLOWANCE
    pos, end = 0, len(data)
    while pos < end:
        budget -= 1
        if budget < 0:
            return None
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 2:
            length = data[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1 + length
            elif pos + 1 < end and data[pos + 1] < 0x80:  # 128 B to 16 KiB: a batch item
                pos += 2 + ((length & 0x7F) | (data[pos + 1] << 7))
            else:
                length, pos = _varint(data, pos)
                pos += length
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            return None
        if pos > end or key < 8:
            return None
        number = key >> 3
        if number in counts:
            counts[number] += 1
            if counts[number] > limits[number]:
                return number
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    return 0, len(data) + 1  # truncated or overlong: the caller stops


def _over_limit(upb_msg: Any, bound: _Bound, count: int) -> InvalidArgument:
    return InvalidArgument(
        f"{upb_msg.DESCRIPTOR.name}.{bound.field}",
        f"{count} items is above the limit of {bound.limit} ({bound.setting}); send fewer per call",
    )


def _many(field: dataclasses.Field[Any]) -> bool:
    meta = betterproto2.FieldMetadata.get(field)
    return bool(meta.repeated) or meta.proto_type == betterproto2.TYPE_MAP


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_NAIVE_EPOCH = _EPOCH.replace(tzinfo=None)


def _set_timestamp(sub: Any, value: datetime.datetime) -> None:
    """``Timestamp.FromDatetime`` without its ``calendar.timegm`` (~4 us -> ~0.7 us; a KVGet
    answer or a JetStream message carries one). Naive datetimes count as UTC, as there."""
    delta = value - (_EPOCH if value.tzinfo is not None else _NAIVE_EPOCH)
    sub.seconds = delta.days * 86400 + delta.seconds
    sub.nanos = delta.microseconds * 1000


#: Answers that never change (see :func:`constant`), by id; each codec keeps their bytes.
_CONSTANTS: dict[int, Any] = {}


def constant(message: _M) -> _M:
    """Declare ``message`` an answer that is never changed: codecs encode it once and reuse the
    bytes (a successful Publish answers the same every time)."""
    _CONSTANTS[id(message)] = message
    return message


class GatewayCodec(ProtoCodec):
    """grpclib codec: upb-bridged for registered dataclasses, plain protobuf for the rest.

    ``max_message_size`` (the largest payload plus :data:`ENVELOPE_ALLOWANCE`) is read by
    natsgw.wire.compression when it receives a frame.
    """

    def __init__(self, bridge: UpbBridge | None, max_payload: int) -> None:
        self.bridge = bridge
        self.max_message_size = max_payload + ENVELOPE_ALLOWANCE
        self._constant_bytes: dict[int, bytes] = {}

    def encode(self, message: Any, message_type: Any) -> bytes:
        key = id(message)
        if _CONSTANTS.get(key) is message:
            encoded = self._constant_bytes.get(key)
            if encoded is None:
                encoded = self._constant_bytes[key] = self._encode(message, message_type)
            return encoded
        return self._encode(message, message_type)

    def _encode(self, message: Any, message_type: Any) -> bytes:
        bridge = self.bridge
        if bridge is not None and bridge.knows(message_type):
            if not isinstance(message, message_type):
                raise TypeError(f"{type(message).__name__} is not {message_type.__name__}")
            return bridge.encode(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        bridge = self.bridge
        if bridge is not None and bridge.knows(message_type):
            return bridge.decode(data, message_type)
        try:
            return super().decode(data, message_type)
        except DecodeError:
            raise UndecodableRequest(message_type.DESCRIPTOR.name) from None
