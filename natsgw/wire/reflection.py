"""Server reflection that serves api/'s comments, so ``grpcurl describe`` and IDEs show the docs.

grpclib's reflection rebuilds each file from the descriptor pool, and upb's ``CopyToProto`` drops
source info, so every comment in ``api/nats_service.proto`` would be lost. ``nox -s proto`` also
writes the file with its source info (``natsgw/_generated/nats_service.binpb``); for that file the
services below answer with those bytes, and for every other file (health, reflection) as grpclib
does.

``file_containing_symbol`` also finds what upb's ``FindFileContainingSymbol`` does not: a method
(``isa.nats.NATSService.Publish``, what ``grpcurl describe`` sends for one) and an enum value
written under its enum (``isa.nats.StorageType.STORAGE_MEMORY``); services, messages (nested
too), fields, enums and package-scoped enum values it finds itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from importlib import resources
from typing import Any

from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from grpclib.reflection import _deprecated
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2 as v1
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha
from grpclib.utils import _service_name

import natsgw.compat.grpclib  # noqa: F401 - the grpclib release these private hooks are from

#: grpclib's private hooks overridden or called below (grpclib is pinned exactly, see
#: natsgw/compat/grpclib.py). An override of a renamed hook would silently never run again
#: (methods would be NOT_FOUND once more), so their absence fails at import instead.
_HOOKS = ("_file_containing_symbol_response", "_file_descriptor_response", "_not_found_response")
for _base in (ServerReflection, _deprecated.ServerReflection):
    for _hook in _HOOKS:
        if not callable(getattr(_base, _hook, None)):
            raise ImportError(f"grpclib's {_base.__qualname__} has no {_hook}: see {__name__}")


def containing_file(pool: Any, symbol: str) -> FileDescriptor | None:
    """The file that defines ``symbol`` (any kind of symbol), or None when there is none.

    Why more than ``pool.FindFileContainingSymbol``: upb's pool indexes services, messages,
    fields, enums and enum values, but not a service's methods, and an enum value only at its
    package scope; grpcurl asks for methods by their full name.
    """
    try:
        found: FileDescriptor = pool.FindFileContainingSymbol(symbol)
        return found
    except KeyError:
        pass
    parent, _, leaf = symbol.rpartition(".")
    if not parent or not leaf:
        return None
    try:
        service = pool.FindServiceByName(parent)
    except KeyError:
        pass
    else:
        return service.file if leaf in service.methods_by_name else None
    try:
        enum = pool.FindEnumTypeByName(parent)
    except KeyError:
        return None
    return enum.file if leaf in enum.values_by_name else None


@functools.cache
def documented_files() -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with source info (comments)."""
    data = resources.files("natsgw._generated").joinpath("nats_service.binpb").read_bytes()
    return {f.name: f.SerializeToString() for f in FileDescriptorSet.FromString(data).file}


class _Documented:
    """What both protocol versions answer differently from grpclib: every kind of symbol, and
    natsgw's own file with its comments. ``_pb`` is the version's message module."""

    _pb: Any
    _pool: Any

    _not_found_response: Callable[[], Any]  # grpclib's, from the version's base class

    def _file_containing_symbol_response(self, symbol: str) -> Any:
        found = containing_file(self._pool, symbol)
        if found is None:
            return self._not_found_response()
        return self._file_descriptor_response(found)

    def _file_descriptor_response(self, file_descriptor: FileDescriptor) -> Any:
        documented = documented_files().get(file_descriptor.name)
        if documented is None:
            return super()._file_descriptor_response(file_descriptor)  # type: ignore[misc]
        return self._pb.ServerReflectionResponse(
            file_descriptor_response=self._pb.FileDescriptorResponse(
                file_descriptor_proto=[documented]
            )
        )


class DocumentedReflection(_Documented, ServerReflection):
    """grpc.reflection.v1 with comments, finding every kind of symbol."""

    _pb = v1

    @classmethod
    def extend(cls, services: Collection[Any], *, pool: Any | None = None) -> list[Any]:
        names = [_service_name(service) for service in services]
        return [
            *services,
            cls(_service_names=names, _pool=pool),
            _DocumentedReflectionV1Alpha(_service_names=names, _pool=pool),
        ]


class _DocumentedReflectionV1Alpha(_Documented, _deprecated.ServerReflection):
    """grpc.reflection.v1alpha (what older grpcurl asks) with comments, every kind of symbol."""

    _pb = v1alpha
