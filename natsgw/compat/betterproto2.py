"""betterproto2 internals the wire codec needs (natsgw.wire.codec is the only user)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from natsgw.compat import require

PINNED = "0.10.0"
require("betterproto2", PINNED, __name__)


def field_classes(message_cls: type[Any]) -> Mapping[str, type]:
    """The enum or message class of each enum/message field of a generated message class.

    Why: the codec bridges betterproto2 dataclasses to upb messages field by field and must build
    nested values of the right class; betterproto2 resolves the field annotations to classes
    only in its private per-class metadata (``Message._betterproto.cls_by_field``).
    Upstream fix that removes it: a public accessor for a message class's field metadata.
    """
    classes: Mapping[str, type] = message_cls._betterproto.cls_by_field
    return classes
