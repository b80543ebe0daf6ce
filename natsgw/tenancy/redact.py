"""Text a tenant may read: NATS names in free text (error messages) rewritten or hidden.

Structured answers are mapped name by name (``Namespace.from_name`` / ``from_subject``); this is
for messages composed elsewhere (nats-server, nats-py, the adapter) that may quote a NATS name.
Any tenant's prefix goes, with the ``KV_``/``OBJ_`` of a bucket's backing stream, so the rest
reads as the tenant's own name; what remains of a ``$JS``/``$KV``/``$O`` subject is not the
tenant's business and is replaced whole.
"""

from __future__ import annotations

import functools
import re

#: What replaces an internal NATS subject in a message.
INTERNAL_SUBJECT = "(a NATS internal subject)"
_INTERNAL = re.compile(r"\$(?:JS|KV|O)\b[^\s'\",;()\[\]]*")


@functools.lru_cache(maxsize=8)
def _prefix(root: str) -> re.Pattern[str]:
    # [KV_|OBJ_] root, separator, tenant key (kind letter + escaped id: never '.' or '-'), separator
    return re.compile(rf"(?:KV_|OBJ_)?{re.escape(root)}[.-][uo][A-Za-z0-9_]*[.-]")


def public_text(text: str, root: str) -> str:
    """``text`` with every namespace prefix removed and internal subjects hidden."""
    if "$" not in text and root not in text:
        return text
    return _INTERNAL.sub(INTERNAL_SUBJECT, _prefix(root).sub("", text))
