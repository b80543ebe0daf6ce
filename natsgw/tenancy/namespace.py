"""Pure mapping between what a tenant names and what NATS stores.

Everything here is a function of plain values: no I/O, no NATS client. That is what lets the
mapping be property-tested as the security boundary it is (see ``tests/property``).

The scheme, for tenant key ``K`` (see :func:`tenant_key`) under the root ``natsgw``::

    subject / pattern      orders.created      ->  natsgw.K.orders.created
    stream                 orders              ->  natsgw-K-orders
    Key-Value bucket       cache               ->  natsgw-K-cache   (stream KV_natsgw-K-cache)
    Object bucket          files               ->  natsgw-K-files   (stream OBJ_natsgw-K-files)
    consumer               worker              ->  worker              (streams are already private)

``K`` is a one-letter kind (``u`` user, ``o`` organization) followed by the id escaped into
``[A-Za-z0-9_]``: ASCII letters and digits stay, every other UTF-8 byte becomes ``_XX``. The
escape is prefix-free, so ``K`` is injective and never contains ``.``, ``-``, ``*`` or ``>``;
since ``K`` cannot contain the separator that follows it, two tenants' prefixes never overlap.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from natsgw.errors import InvalidArgument, excerpt

DEFAULT_ROOT = "natsgw"

#: Longest tenant key, in characters; the rest of a 255-byte NATS name is left to the tenant.
MAX_TENANT_KEY = 128
#: Longest NATS subject the gateway will build (the server's control line is 4 KiB by default).
MAX_SUBJECT_BYTES = 1024
#: Longest stream or consumer name NATS accepts (it becomes a directory name).
MAX_NAME_BYTES = 255
#: Longest bucket name, leaving room for the ``KV_`` / ``OBJ_`` prefix of its backing stream.
MAX_BUCKET_BYTES = 240

_ROOT_RE = re.compile(r"^[A-Za-z0-9]+$")
_HEX2_RE = re.compile(r"[0-9A-F]{2}")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_FORBIDDEN = frozenset(".*>/\\")


class TenantKind(StrEnum):
    USER = "u"
    ORGANIZATION = "o"


@dataclass(frozen=True, slots=True)
class Tenant:
    """Whose namespace a call works in: a user's own, or an organization's shared one."""

    kind: TenantKind
    id: str

    @classmethod
    def user(cls, user_id: str) -> Tenant:
        return cls(TenantKind.USER, user_id)

    @classmethod
    def organization(cls, organization_id: str) -> Tenant:
        return cls(TenantKind.ORGANIZATION, organization_id)

    @property
    def id_field(self) -> str:
        return "user_id" if self.kind is TenantKind.USER else "organization_id"


def escape_id(raw: str) -> str:
    """Escape any text into ``[A-Za-z0-9_]``, injectively (``_`` itself becomes ``_5F``)."""
    out: list[str] = []
    for ch in raw:
        if ch in _KEEP:
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def unescape_id(escaped: str) -> str:
    """Inverse of :func:`escape_id`; raises ``ValueError`` on text it could not have produced."""
    buf = bytearray()
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "_":
            hex_digits = escaped[i + 1 : i + 3]
            if not _HEX2_RE.fullmatch(hex_digits):
                raise ValueError(f"bad escape at {i}")
            buf.append(int(hex_digits, 16))
            i += 3
        elif ch in _KEEP:
            buf.extend(ch.encode("ascii"))
            i += 1
        else:
            raise ValueError(f"unexpected character {ch!r}")
    return buf.decode("utf-8", "surrogatepass")


def tenant_key(tenant: Tenant) -> str:
    """The tenant's token inside every NATS name: kind letter + escaped id."""
    if not tenant.id:
        raise InvalidArgument(tenant.id_field, "must not be empty")
    key = tenant.kind.value + escape_id(tenant.id)
    if len(key) > MAX_TENANT_KEY:
        raise InvalidArgument(
            tenant.id_field,
            f"is too long: it escapes to {len(key)} characters, the limit is {MAX_TENANT_KEY}",
        )
    return key


def _utf8_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _bad_char(text: str) -> str | None:
    """First character NATS (or a file system) would choke on: whitespace, control, surrogate."""
    if text.isascii() and text.isprintable() and " " not in text:
        return None  # the usual case, in C: printable ASCII has no control characters
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            return ch
    return None


def check_subject(subject: str, field: str, *, wildcards: bool) -> None:
    """Refuse a tenant-side subject NATS would reject or misread.

    With ``wildcards``, ``*`` may stand as a whole token anywhere and ``>`` as the last token;
    without, neither may appear at all, so a publish never fans out by accident.
    """
    if not subject:
        raise InvalidArgument(field, "must not be empty")
    if (
        subject.isascii()
        and subject.isprintable()
        and " " not in subject
        and "*" not in subject
        and ">" not in subject
        and ".." not in subject
        and subject[0] != "."
        and subject[-1] != "."
    ):
        return  # the usual concrete subject, checked in C; anything else takes the long way
    bad = _bad_char(subject)
    if bad is not None:
        raise InvalidArgument(
            field,
            f"{excerpt(subject)} contains {bad!r}; "
            "whitespace and control characters are not allowed",
        )
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise InvalidArgument(
                field, f"{excerpt(subject)} has an empty token (leading, trailing or '..')"
            )
        if token in ("*", ">") and wildcards:
            if token == ">" and index != len(tokens) - 1:
                raise InvalidArgument(
                    field, f"{excerpt(subject)}: '>' is only allowed as the last token"
                )
            continue
        if "*" in token or ">" in token:
            where = (
                "as whole tokens in a subscription" if wildcards else "in a subscription pattern"
            )
            raise InvalidArgument(
                field, f"{excerpt(subject)}: '*' and '>' are only allowed {where}, not here"
            )


def check_name(name: str, field: str, *, max_bytes: int = MAX_NAME_BYTES) -> None:
    """Refuse a stream or consumer name NATS would reject."""
    if not name:
        raise InvalidArgument(field, "must not be empty")
    bad = _bad_char(name)
    if bad is None:
        bad = next((ch for ch in name if ch in _NAME_FORBIDDEN), None)
    if bad is not None:
        raise InvalidArgument(
            field,
            f"{excerpt(name)} contains {bad!r}; "
            "names may not contain whitespace, '.', '*', '>', '/' or '\\'",
        )
    if _utf8_len(name) > max_bytes:
        raise InvalidArgument(field, f"{excerpt(name)} is longer than {max_bytes} bytes")


#: Longest Key-Value key or watch pattern, in bytes (it becomes a subject inside the bucket).
MAX_KV_KEY_BYTES = 1024
#: Longest object name, in UTF-8 bytes (its base64 becomes a subject token).
MAX_OBJECT_NAME_BYTES = 1024
_KV_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_KV_PATTERN_TOKEN_RE = re.compile(r"^[-/_=a-zA-Z0-9]+$")


def check_kv_key(key: str, field: str = "key") -> None:
    """Refuse a Key-Value key NATS would refuse: ``[-/_=.a-zA-Z0-9]+``, no '.' at either end."""
    if not key:
        raise InvalidArgument(field, "must not be empty")
    if _utf8_len(key) > MAX_KV_KEY_BYTES:
        raise InvalidArgument(field, f"is longer than {MAX_KV_KEY_BYTES} bytes")
    if not _KV_KEY_RE.fullmatch(key):
        raise InvalidArgument(
            field,
            f"{excerpt(key)} is not a valid key: use letters, digits and '-', '/', '_', '=', '.'",
        )
    if key.startswith(".") or key.endswith("."):
        raise InvalidArgument(
            field, f"{excerpt(key)} is not a valid key: it may not start or end with '.'"
        )
    if ".." in key:
        raise InvalidArgument(
            field, f"{excerpt(key)} is not a valid key: it has an empty token ('..')"
        )


def kv_watch_pattern(pattern: str, field: str = "key") -> str:
    """A key or a key pattern to watch; empty means every key (``>``).

    ``*`` matches one '.'-separated token and ``>`` the rest, as whole tokens only.
    """
    if not pattern:
        return ">"
    if _utf8_len(pattern) > MAX_KV_KEY_BYTES:
        raise InvalidArgument(field, f"is longer than {MAX_KV_KEY_BYTES} bytes")
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if token == "*" or (token == ">" and index == len(tokens) - 1):
            continue
        if token == ">":
            raise InvalidArgument(
                field, f"{excerpt(pattern)}: '>' is only allowed as the last token"
            )
        if not token:
            raise InvalidArgument(
                field, f"{excerpt(pattern)} has an empty token (leading, trailing or '..')"
            )
        if not _KV_PATTERN_TOKEN_RE.fullmatch(token):
            raise InvalidArgument(
                field,
                f"{excerpt(pattern)} is not a valid key pattern: use letters, digits, '-', '/', "
                "'_', "
                "'=', '.' and whole-token '*' or a final '>'",
            )
    return pattern


def check_object_name(name: str, field: str = "object_name") -> None:
    """Object names are any UTF-8 text except NUL, up to MAX_OBJECT_NAME_BYTES bytes."""
    if not name:
        raise InvalidArgument(field, "must not be empty")
    if "\x00" in name:
        raise InvalidArgument(field, "must not contain NUL characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(field, "must be valid UTF-8 text (no lone surrogates)") from None
    if size > MAX_OBJECT_NAME_BYTES:
        raise InvalidArgument(field, f"is {size} bytes; the limit is {MAX_OBJECT_NAME_BYTES}")


@dataclass(frozen=True, slots=True)
class Namespace:
    """One tenant's view of NATS: maps its names in, and NATS names back out."""

    tenant: Tenant
    root: str = DEFAULT_ROOT
    key: str = field(init=False)
    subject_prefix: str = field(init=False)
    name_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        if not _ROOT_RE.fullmatch(self.root):
            raise ValueError(f"namespace root must match [A-Za-z0-9]+, got {self.root!r}")
        key = tenant_key(self.tenant)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "subject_prefix", f"{self.root}.{key}.")
        object.__setattr__(self, "name_prefix", f"{self.root}-{key}-")

    # -- subjects -------------------------------------------------------------------------------

    def subject(self, subject: str, field: str = "subject") -> str:
        """A concrete subject to publish to (no wildcards)."""
        check_subject(subject, field, wildcards=False)
        return self._prefixed(subject, field)

    def pattern(self, pattern: str, field: str = "subject") -> str:
        """A subscription or filter pattern; ``*`` and ``>`` stay inside the namespace."""
        check_subject(pattern, field, wildcards=True)
        return self._prefixed(pattern, field)

    def inbox(self, token: str) -> str:
        """Reply subject for a gateway-made request; the tenant sees it as ``_INBOX.<token>``."""
        return self.subject(f"_INBOX.{token}", "reply_to")

    def _prefixed(self, subject: str, field: str) -> str:
        mapped = self.subject_prefix + subject
        if _utf8_len(mapped) > MAX_SUBJECT_BYTES:
            budget = MAX_SUBJECT_BYTES - _utf8_len(self.subject_prefix)
            raise InvalidArgument(field, f"is longer than this tenant's limit of {budget} bytes")
        return mapped

    def from_subject(self, nats_subject: str) -> str | None:
        """The tenant's view of a NATS subject, or None when it lies outside the namespace."""
        if nats_subject.startswith(self.subject_prefix) and len(nats_subject) > len(
            self.subject_prefix
        ):
            return nats_subject[len(self.subject_prefix) :]
        return None

    # -- named resources -------------------------------------------------------------------------

    def stream(self, name: str, field: str = "stream_name") -> str:
        return self._named(name, field, MAX_NAME_BYTES)

    def kv_bucket(self, bucket: str, field: str = "bucket") -> str:
        self._check_bucket(bucket, field)
        return self._named(bucket, field, MAX_BUCKET_BYTES)

    def object_bucket(self, bucket: str, field: str = "bucket") -> str:
        self._check_bucket(bucket, field)
        return self._named(bucket, field, MAX_BUCKET_BYTES)

    def consumer(self, name: str, field: str = "consumer_name") -> str:
        """Consumers live inside an already private stream, so only NATS's rules apply."""
        check_name(name, field)
        return name

    def from_name(self, nats_name: str) -> str | None:
        """The tenant's name for a stream or bucket, or None when another tenant owns it."""
        if nats_name.startswith(self.name_prefix) and len(nats_name) > len(self.name_prefix):
            return nats_name[len(self.name_prefix) :]
        return None

    def _named(self, name: str, field: str, max_bytes: int) -> str:
        budget = max_bytes - len(self.name_prefix)
        check_name(name, field, max_bytes=budget)
        return self.name_prefix + name

    @staticmethod
    def _check_bucket(bucket: str, field: str) -> None:
        if not bucket:
            raise InvalidArgument(field, "must not be empty")
        if not _BUCKET_RE.fullmatch(bucket):
            raise InvalidArgument(
                field, f"{excerpt(bucket)} may only contain letters A-Z a-z, digits, '_' and '-'"
            )


# -- consumer metadata (consumer control) ---------------------------------------------------------

#: Metadata key prefixes tenants may neither set nor read: ``_nats`` is nats-server's own
#: (``_nats.ver``, ``_nats.level``), ``natsgw`` the gateway's (features that keep state on a
#: consumer). Compared case-insensitively, so ``NATSGW.x`` is reserved too.
RESERVED_METADATA_PREFIXES = ("_nats", "natsgw")
#: Most metadata entries a tenant may put on one consumer.
MAX_METADATA_ENTRIES = 64
#: Longest metadata key and value, in UTF-8 bytes.
MAX_METADATA_KEY_BYTES = 256
MAX_METADATA_VALUE_BYTES = 4096


def reserved_metadata_key(key: str) -> bool:
    """True for a key natsgw or nats-server owns (never settable or readable by a tenant)."""
    return key.casefold().startswith(RESERVED_METADATA_PREFIXES)


def tenant_metadata(metadata: Mapping[str, str], field: str = "metadata") -> dict[str, str]:
    """A tenant's consumer metadata, checked: bounded, printable keys, no reserved key."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(
            field, f"has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES} are allowed"
        )
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not key or not key.isprintable() or _utf8_len(key) > MAX_METADATA_KEY_BYTES:
            raise InvalidArgument(
                field,
                f"key {excerpt(key)} must be non-empty printable text of at most "
                f"{MAX_METADATA_KEY_BYTES} bytes",
            )
        if reserved_metadata_key(key):
            raise InvalidArgument(
                field,
                f"key {excerpt(key)} is reserved (keys starting with "
                f"{' or '.join(repr(p) for p in RESERVED_METADATA_PREFIXES)} belong to the "
                "gateway and the server); choose another name",
            )
        if _utf8_len(value) > MAX_METADATA_VALUE_BYTES:
            raise InvalidArgument(
                field, f"value of {excerpt(key)} is longer than {MAX_METADATA_VALUE_BYTES} bytes"
            )
        out[key] = value
    return out


def public_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """What a tenant sees of a consumer's metadata: every key but the reserved ones."""
    return {k: v for k, v in metadata.items() if not reserved_metadata_key(k)}


def internal_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The gateway's own entries (``natsgw...``) of a consumer's metadata, to carry across an
    update the tenant cannot see them in (``_nats...`` ones the server rewrites itself)."""
    return {
        k: v
        for k, v in metadata.items()
        if reserved_metadata_key(k) and not k.casefold().startswith("_nats")
    }


# --- dead letters ---


def namespace_of_stream(nats_stream: str, root: str = DEFAULT_ROOT) -> Namespace | None:
    """The namespace owning a tenant stream's NATS name, or None when no tenant owns it.

    The dead-letter relay starts from a NATS stream name (an advisory's) and must map the
    consumer's dead-letter stream, named in the tenant's terms, into the SAME tenant: this is
    the inverse of :meth:`Namespace.stream` on the prefix, so what it returns always satisfies
    ``nats_stream.startswith(ns.name_prefix)``.
    """
    head = f"{root}-"
    if not nats_stream.startswith(head):
        return None
    key, sep, rest = nats_stream[len(head) :].partition("-")
    if not sep or not rest or len(key) < 2:
        return None
    try:
        kind = TenantKind(key[0])
        tenant = Tenant(kind, unescape_id(key[1:]))
        ns = Namespace(tenant, root)
    except (ValueError, InvalidArgument):
        return None
    return ns if ns.key == key else None
