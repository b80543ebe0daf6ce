"""The tenancy layer: pure mapping between what a tenant names and what NATS stores.

No I/O and no NATS client anywhere in this package; that is what lets the mapping be
property-tested as the security boundary it is. :mod:`.namespace` maps names, :mod:`.subjects`
matches wildcards as the server does, :mod:`.acks` seals JetStream ack subjects into tokens.
"""

from natsgw.tenancy.namespace import (
    MAX_NAME_BYTES,
    MAX_SUBJECT_BYTES,
    Namespace,
    Tenant,
    TenantKind,
    check_kv_key,
    check_name,
    check_object_name,
    check_subject,
    escape_id,
    internal_metadata,
    kv_watch_pattern,
    namespace_of_stream,
    public_metadata,
    reserved_metadata_key,
    tenant_key,
    tenant_metadata,
    unescape_id,
)
from natsgw.tenancy.redact import public_text

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_SUBJECT_BYTES",
    "Namespace",
    "Tenant",
    "TenantKind",
    "check_kv_key",
    "check_name",
    "check_object_name",
    "check_subject",
    "escape_id",
    "internal_metadata",
    "kv_watch_pattern",
    "namespace_of_stream",
    "public_metadata",
    "public_text",
    "reserved_metadata_key",
    "tenant_key",
    "tenant_metadata",
    "unescape_id",
]
