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
- Object payloads above :data:`SPLICE_ABOVE` (:data:`OBJECT_PAYLOADS`) do not go through upb: a
  request's payload is a read-only view into the received bytes, an answer's is appended to the
  rest of the message (one copy of an 8 MiB object where upb made two, into fresh pages).

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
from natsgw.wire.budget import RequestBudget

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
    items: type[Any] | None = None  # repeated field of natsgw.wire.items: their dataclass


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
        #: Per item class: the checks left for items the pre-scan measured as too short to hold
        #: more entries than any of their bounds allows (:meth:`_checked_items`), and that length.
        self._short_item_checks: dict[type[Any], tuple[tuple[str, _Converter], ...]] = {}
        self._short_item_bytes: dict[type[Any], int] = {}
        self._pairs: dict[type[betterproto2.Message], type[Any]] = {}
        self._plans: dict[type[betterproto2.Message], list[_FieldPlan]] = {}
        self._bounds: dict[type[betterproto2.Message], tuple[_Bound, ...]] = {}
        #: Classes with a field in OBJECT_PAYLOADS: its name and field number (``_viewed``:
        #: those decoded with the payload as a view).
        self._spliced: dict[type[Any], tuple[str, int]] = {}
        self._viewed: set[type[Any]] = set()
        #: Top-level request conversions, compiled on first use (:func:`_compile_converter`).
        self._converters: dict[type[Any], Callable[[Any], Any]] = {}
        #: Top-level answer conversions, compiled on first use (:func:`_compile_builder`).
        self._builders: dict[type[Any], Callable[[Any], Any]] = {}
        #: Where a request class carries its ids (:meth:`ids_seen`), found on first use.
        self._id_fields: dict[type[Any], tuple[tuple[int, ...], dict[int, str]]] = {}

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
        payload = OBJECT_PAYLOADS.get(full_name)
        if payload is not None:
            self._spliced[cls] = (payload, upb_cls.DESCRIPTOR.fields_by_name[payload].number)
            if full_name in _VIEWED_PAYLOADS:
                self._viewed.add(cls)
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
        self._short_item_checks[cls] = tuple(
            (p.name, p.to_dc) for p in plans if p.post_set is not None and p.to_dc is not None
        )
        # Every entry of a map or of a repeated message/string/bytes field takes at least 2
        # bytes on the wire (tag and length), of a packed scalar field at least 1.
        self._short_item_bytes[cls] = min(
            (
                _entry_bytes(f) * (p.bound.limit + 1) - 1
                for p, f in zip(plans, dataclasses.fields(cls), strict=True)
                if p.bound is not None
            ),
            default=2**62,
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
            if wrapped == "Duration" and meta.repeated:  # ConsumerConfig.backoff (#18 item 1)
                return _FieldPlan(
                    name,
                    lambda v: [d.ToTimedelta() for d in v],
                    None,
                    False,
                    _set_durations,
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
                items=sub_cls,
            )
        if meta.repeated:
            return _FieldPlan(
                name,
                lambda v: [self.to_dataclass(sub_cls, x) for x in v],
                lambda v: list(map(self.builder(sub_cls), v)),  # e.g. 1000 batch results
                False,
                None,
            )
        return _FieldPlan(
            name,
            lambda v: self.to_dataclass(sub_cls, v),
            lambda v: self.builder(sub_cls)(v),
            True,
            None,
        )

    def to_dataclass(self, cls: type[Any], upb_msg: Any, longest_item: int | None = None) -> Any:
        """``longest_item``: the pre-scan's longest top-level item, in bytes (None: unknown)."""
        kwargs: dict[str, Any] = {}
        for plan in self._plans[cls]:
            if plan.presence and not upb_msg.HasField(plan.name):
                continue
            value = getattr(upb_msg, plan.name)
            bound = plan.bound  # every repeated field is counted before it is expanded
            if bound is not None and len(value) > bound.limit:
                raise _over_limit(upb_msg, bound, len(value))
            if plan.items is not None and longest_item is not None:
                kwargs[plan.name] = self._checked_items(plan.items, value, longest_item)
            else:
                kwargs[plan.name] = value if plan.to_dc is None else plan.to_dc(value)
        return cls(**kwargs)

    def _checked_items(self, cls: type[Any], items: Any, longest: int | None = None) -> list[Any]:
        """The upb items of a repeated field as a list, refused exactly as :meth:`to_dataclass`
        would refuse them (same bounds, same messages), without building a dataclass each.

        Reading a field of a upb item costs ~0.2 µs, so the bounds are not read on items the
        pre-scan measured (``longest`` bytes at most) too short to exceed them."""
        out = list(items)
        if longest is not None and longest <= self._short_item_bytes[cls]:
            for name, to_dc in self._short_item_checks[cls]:
                for item in out:
                    if item.HasField(name):
                        to_dc(getattr(item, name))  # only to refuse what would not convert
            return out
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

    def builder(self, cls: type[Any]) -> Callable[[Any], Any]:
        """``cls``'s compiled :meth:`to_upb` (:func:`_compile_builder`), made on first use."""
        build = self._builders.get(cls)
        if build is None:
            build = self._builders[cls] = _compile_builder(self._pairs[cls], self._plans[cls])
        return build

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
        if len(data) > SPLICE_ABOVE and cls in self._viewed:
            spliced = self._decode_spliced(data, cls)
            if spliced is not None:
                return spliced
        upb_cls = self._pairs[cls]
        longest = None
        if len(data) > PRESCAN_ABOVE and self._bounds[cls]:
            longest = self._prescan(cls, upb_cls, data)
        try:
            upb_msg = upb_cls.FromString(data)
        except DecodeError:
            raise UndecodableRequest(upb_cls.DESCRIPTOR.name) from None
        try:
            if longest is not None:  # a pre-scanned batch: items short enough skip their checks
                return self.to_dataclass(cls, upb_msg, longest)
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
        payload = self._spliced.get(cls)
        if payload is not None and len(getattr(message, payload[0])) > SPLICE_ABOVE:
            return self._encode_spliced(message, *payload)
        return bytes(self.builder(cls)(message).SerializeToString())

    def _decode_spliced(self, data: bytes, cls: type[Any]) -> Any | None:
        """A message whose object payload is a read-only ``memoryview`` into ``data``; None when
        ``data`` is not plainly laid out (the usual path then decodes or refuses it).

        Through upb, an 8 MiB payload was copied twice more (upb's parse, then the ``bytes`` its
        field returns), each copy into fresh pages (~12 ms on this machine) and alive at once.
        The other fields are decoded, bounded and refused exactly as on the usual path.
        """
        name, number = self._spliced[cls]
        split = _split_field(data, number)
        if split is None:
            return None
        start, end, rest = split
        message = self.decode(rest, cls)
        setattr(message, name, memoryview(data)[start:end])
        return message

    def _encode_spliced(self, message: Any, name: str, number: int) -> bytes:
        """The message with its object payload appended as the last field (any field order is
        valid protobuf): one copy of the payload, where upb's build and serialize made two."""
        payload = getattr(message, name)
        rest = self.to_upb(dataclasses.replace(message, **{name: b""})).SerializeToString()
        head = _varint_bytes((number << 3) | 2) + _varint_bytes(len(payload))
        return b"".join((rest, head, payload))

    def ids_seen(self, cls: type[Any], prefix: bytes) -> IdsSeen:
        """``user_id`` / ``organization_id`` as far as the first bytes of a serialized ``cls``
        show them (a streamed put's: inside its header), read on the wire before the rest of
        the request has arrived: name -> (length in bytes, value; None when it runs past
        ``prefix``). Names not seen are absent; so is everything of a class without ids."""
        found = self._id_fields.get(cls)
        if found is None:
            found = self._id_fields[cls] = _id_fields(self._pairs[cls].DESCRIPTOR)
        path, numbers = found
        return _ids_in(prefix, path, numbers) if numbers else {}

    def _prescan(self, cls: type[Any], upb_cls: Any, data: bytes) -> int | None:
        """Count the top-level repeated fields on the wire, stopping at the first one over its
        limit: a million-item batch is refused after reading ``limit`` tags, before upb builds
        a million messages (~90 bytes each). Returns the longest length-delimited item of those
        fields, or None when the scan stopped before the end."""
        numbers = upb_cls.DESCRIPTOR.fields_by_name
        bounds = {numbers[b.field].number: b for b in self._bounds[cls]}
        over, longest = _scan(data, {number: b.limit for number, b in bounds.items()})
        if over is not None:
            bound = bounds[over]
            raise InvalidArgument(
                f"{upb_cls.DESCRIPTOR.name}.{bound.field}",
                f"more than {bound.limit} items, above the limit of {bound.limit} "
                f"({bound.setting}); send fewer per call",
            )
        return longest


#: Fields that carry whole objects (unary ObjectPut / ObjectGet, streamed chunks), by message.
#: Requests are decoded with the payload as a view (only the gateway decodes requests: a
#: client's answers stay ``bytes``); both are encoded with the payload appended.
OBJECT_PAYLOADS = {
    "isa.nats.ObjectPutRequest": "data",
    "isa.nats.ObjectPutStreamRequest": "chunk",
    "isa.nats.ObjectGetResponse": "data",
    "isa.nats.ObjectGetStreamResponse": "chunk",
}
_VIEWED_PAYLOADS = ("isa.nats.ObjectPutRequest", "isa.nats.ObjectPutStreamRequest")
#: Object payloads larger than this bypass upb (:meth:`UpbBridge._decode_spliced`).
SPLICE_ABOVE = 1024 * 1024
#: Most top-level fields :func:`_split_field` walks before leaving a message to upb.
_SPLIT_FIELDS = 4096


def _set_durations(container: Any, values: list[datetime.timedelta]) -> None:
    """A repeated Duration field (ConsumerConfig.backoff), set after construction."""
    for value in values:
        container.add().FromTimedelta(value)


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
    or None; stops quietly at anything malformed (upb then says what is wrong)."""
    return _scan(data, limits)[0]


def _scan(data: bytes, limits: dict[int, int]) -> tuple[int | None, int | None]:
    """:func:`_first_over_limit`, and the longest length-delimited occurrence of a counted
    field (None when the walk stopped before the end of ``data``).

    The walk itself is bounded: a legal message has at most the limits' sum plus its singular
    fields, so after that many fields it stops and leaves the rest to upb (which overwrites a
    repeated singular field rather than expanding it) instead of walking millions in Python.
    Batch items (one-byte tag, length below 16 KiB) take a short path: ~0.3 µs each.
    """
    left = dict(limits)  # items each counted field may still have
    items = frozenset((number << 3) | 2 for number in limits if number < 16)  # one-byte tags
    budget = sum(limits.values()) + _SINGULAR_FIELDS_ALLOWANCE
    longest = 0
    pos, end = 0, len(data)
    while pos < end:
        budget -= 1
        if budget < 0:
            return None, None
        key = data[pos]
        if key in items and pos + 2 < end:  # a batch item
            length = data[pos + 1]
            if length < 0x80:
                pos += 2
            elif data[pos + 2] < 0x80:  # 128 B to 16 KiB
                length = (length & 0x7F) | (data[pos + 2] << 7)
                pos += 3
            else:
                length, pos = _varint(data, pos + 1)
            pos += length
            if pos > end:
                return None, None
            if length > longest:
                longest = length
            number = key >> 3
            remaining = left[number] - 1
            if remaining < 0:
                return number, None
            left[number] = remaining
            continue
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos)
        wire_type = key & 7
        length = 0
        if wire_type == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            return None, None
        if pos > end or key < 8:
            return None, None
        number = key >> 3
        if number in left:
            if length > longest:
                longest = length
            remaining = left[number] - 1
            if remaining < 0:
                return number, None
            left[number] = remaining
    return None, longest


#: What :meth:`UpbBridge.ids_seen` found: field name -> (length, value or None when cut off).
IdsSeen = dict[str, tuple[int, bytes | None]]
_ID_NAMES = ("user_id", "organization_id")


def _id_fields(descriptor: Any) -> tuple[tuple[int, ...], dict[int, str]]:
    """The path of field numbers to the message holding the ids (empty: the message itself),
    and the ids' field numbers there; no numbers for a message without ids."""
    fields = descriptor.fields_by_name
    if "user_id" in fields:
        return (), {fields[n].number: n for n in _ID_NAMES if n in fields}
    for field in descriptor.fields:
        inner = field.message_type
        if inner is not None and "user_id" in inner.fields_by_name:
            nested = inner.fields_by_name
            return (field.number,), {nested[n].number: n for n in _ID_NAMES if n in nested}
    return (), {}


def _ids_in(data: bytes, path: tuple[int, ...], numbers: dict[int, str]) -> IdsSeen:
    """Walk the top-level fields of ``data`` (a prefix of a message: it may stop anywhere),
    down ``path``, recording the length-delimited fields ``numbers`` names."""
    seen: IdsSeen = {}
    pos, end = 0, len(data)
    for outer in path:
        for _ in range(_SINGULAR_FIELDS_ALLOWANCE):
            if pos >= end:
                return seen
            key, pos = _varint(data, pos)
            wire_type = key & 7
            if wire_type == 2:
                length, pos = _varint(data, pos)
                if key >> 3 == outer:
                    end = min(end, pos + length)
                    break
                pos += length
            elif wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            else:
                return seen
        else:
            return seen
    for _ in range(_SINGULAR_FIELDS_ALLOWANCE):
        if pos >= end:
            break
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _varint(data, pos)
            if pos > end:
                break
            name = numbers.get(key >> 3)
            if name is not None:  # occurring again, the last one counts (as in upb)
                seen[name] = (length, data[pos : pos + length] if pos + length <= end else None)
            pos += length
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            break
    return seen


def _split_field(data: bytes, number: int) -> tuple[int, int, bytes] | None:
    """Where the (last) length-delimited field ``number`` of a serialized message lies, and
    every other field joined; None when it is absent, or ``data`` is malformed or has more than
    :data:`_SPLIT_FIELDS` fields (upb then decides)."""
    start = end = -1
    rest: list[bytes] = []
    pos, size = 0, len(data)
    for _ in range(_SPLIT_FIELDS):
        if pos >= size:
            break
        field_start = pos
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _varint(data, pos)
            if key >> 3 == number and pos + length <= size:
                start, end = pos, pos + length  # occurring again, the last one counts (as in upb)
                pos = end
                continue
            pos += length
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            return None
        if pos > size or key < 8:
            return None
        rest.append(data[field_start:pos])
    else:
        if pos < size:
            return None
    if start < 0:
        return None
    return start, end, b"".join(rest)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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


def _entry_bytes(field: dataclasses.Field[Any]) -> int:
    """Fewest wire bytes one entry of a repeated or map field takes."""
    kind = betterproto2.FieldMetadata.get(field).proto_type
    wide = (betterproto2.TYPE_MAP, betterproto2.TYPE_MESSAGE, betterproto2.TYPE_STRING,
            betterproto2.TYPE_BYTES)  # fmt: skip
    return 2 if kind in wide else 1


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

    ``max_message_size`` (the largest payload plus :data:`ENVELOPE_ALLOWANCE`), ``read_timeout``
    and ``unadmitted_limit`` are read by natsgw.wire.compression when it receives a frame.
    """

    def __init__(
        self,
        bridge: UpbBridge | None,
        max_payload: int,
        *,
        read_timeout: float | None = None,
        unadmitted_limit: int | None = None,
    ) -> None:
        self.bridge = bridge
        self.max_message_size = max_payload + ENVELOPE_ALLOWANCE
        #: Seconds a request message may take to arrive whole (NATSGW_REQUEST_READ_TIMEOUT).
        self.read_timeout = read_timeout
        #: Most bytes of a message read for no admitted call (NATSGW_TRUSTED_PREAUTH_BYTES).
        self.unadmitted_limit = unadmitted_limit
        #: Large request bodies being assembled (natsgw.wire.budget; set by natsgw.server).
        self.request_budget: RequestBudget | None = None
        self._constant_bytes: dict[int, bytes] = {}

    def ids_seen(self, prefix: bytes, message_type: Any) -> IdsSeen:
        """:meth:`UpbBridge.ids_seen` for request types the bridge knows; else nothing."""
        bridge = self.bridge
        if bridge is not None and bridge.knows(message_type):
            return bridge.ids_seen(message_type, prefix)
        return {}

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
