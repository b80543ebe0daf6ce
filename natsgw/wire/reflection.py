"""Server reflection that serves api/'s comments, so ``grpcurl describe`` and IDEs show the docs.

grpclib's reflection rebuilds each file from the descriptor pool, and upb's ``CopyToProto`` drops
source info, so every comment in ``api/nats_service.proto`` would be lost. ``nox -s proto`` also
writes the file with its source info (``natsgw/_generated/nats_service.binpb``); for that file the
services below answer with those bytes, and for every other file (health, reflection) as grpclib
does.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from importlib import resources
from typing import Any

from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from grpclib.reflection import _deprecated
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2 as v1
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha
from grpclib.utils import _service_name


@functools.cache
def documented_files() -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with source info (comments)."""
    data = resources.files("natsgw._generated").joinpath("nats_service.binpb").read_bytes()
    return {f.name: f.SerializeToString() for f in FileDescriptorSet.FromString(data).file}


class DocumentedReflection(ServerReflection):
    """grpc.reflection.v1 with comments."""

    def _file_descriptor_response(self, file_descriptor: FileDescriptor) -> Any:
        documented = documented_files().get(file_descriptor.name)
        if documented is None:
            return super()._file_descriptor_response(file_descriptor)
        return v1.ServerReflectionResponse(
            file_descriptor_response=v1.FileDescriptorResponse(file_descriptor_proto=[documented])
        )

    @classmethod
    def extend(cls, services: Collection[Any], *, pool: Any | None = None) -> list[Any]:
        names = [_service_name(service) for service in services]
        return [
            *services,
            cls(_service_names=names, _pool=pool),
            _DocumentedReflectionV1Alpha(_service_names=names, _pool=pool),
        ]


class _DocumentedReflectionV1Alpha(_deprecated.ServerReflection):
    """grpc.reflection.v1alpha (what older grpcurl asks) with comments."""

    def _file_descriptor_response(self, file_descriptor: FileDescriptor) -> Any:
        documented = documented_files().get(file_descriptor.name)
        if documented is None:
            return super()._file_descriptor_response(file_descriptor)
        return v1alpha.ServerReflectionResponse(
            file_descriptor_response=v1alpha.FileDescriptorResponse(
                file_descriptor_proto=[documented]
            )
        )
