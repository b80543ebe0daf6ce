"""docs/wire-contract.md's tables hold for the compiled api/: the original wire format is intact."""

from __future__ import annotations

import html
import re

from google.protobuf.descriptor import FieldDescriptor

from natsgw._generated import nats_service_pb2
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "wire-contract.md").read_text()
FILE = nats_service_pb2.DESCRIPTOR

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_DOUBLE: "double",
}


def rows(section: str) -> list[list[str]]:
    body = DOC.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in body.splitlines()
        if line.startswith("| ") and not line.startswith(("| #", "| message", "| enum"))
    ]


def type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields
        return f"map<{type_name(key)},{type_name(value)}>"
    if field.type in _SCALARS:
        name = _SCALARS[field.type]
    elif field.type == FieldDescriptor.TYPE_ENUM:
        name = field.enum_type.name
    else:
        full = field.message_type.full_name
        name = full if full.startswith("google.") else field.message_type.name
    repeated = field.is_repeated
    return f"repeated {name}" if repeated else name


def test_the_original_rpcs_keep_their_names_order_and_types() -> None:
    methods = FILE.services_by_name["NATSService"].methods
    table = rows("The original RPCs (31)")
    assert len(table) == 31
    for number, name, request, response in table:
        method = methods[int(number) - 1]
        assert method.name == name
        assert method.input_type.name == request
        streamed = response.startswith("stream ")
        assert method.output_type.name == response.removeprefix("stream ")
        assert method.server_streaming is streamed


def test_the_original_enums_keep_their_values() -> None:
    for name, values in rows("Enums"):
        enum = FILE.enum_types_by_name[name]
        for item in values.split(", "):
            label, number = item.split("=")
            assert enum.values_by_name[label].number == int(number), f"{name}.{label}"


def test_every_original_field_keeps_its_number_name_and_type() -> None:
    checked = 0
    for message, fields in rows("Messages"):
        descriptor = FILE.message_types_by_name[message]
        for spec in html.unescape(fields).split("; "):
            match = re.fullmatch(r"(\d+) (\w+): (.+)", spec)
            assert match, spec
            number, name, typ = int(match[1]), match[2], match[3]
            field = descriptor.fields_by_number[number]
            assert (field.name, type_name(field)) == (name, typ), f"{message}.{name}"
            checked += 1
    assert checked > 200  # the whole table was read
