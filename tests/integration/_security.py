"""Test doubles for the security/operations tests: certificates, keys, fake Loki and Consul.

The fakes implement the real HTTP APIs natsgw uses (Loki's push endpoint; Consul's agent service
endpoints), on free loopback ports, so what the gateway sends is checked as those servers see it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from natsgw.ops.sockets import bind_tcp, bound_port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpFake:
    """An aiohttp app on a loopback port, started and stopped by the test."""

    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        sock = bind_tcp("127.0.0.1", port)
        self.port = bound_port(sock)
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class FakeLoki(HttpFake):
    """``POST /loki/api/v1/push`` with Loki's JSON body; can fail the first pushes with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.pushes: list[dict[str, Any]] = []
        self.failed = 0
        self.app.router.add_post("/loki/api/v1/push", self._push)

    async def _push(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        body = await request.json()
        if self.failed < self.fail_first:
            self.failed += 1
            return web.Response(status=500, text="ingester unavailable")
        for stream in body["streams"]:
            assert isinstance(stream["stream"], dict)
            for ts, line in stream["values"]:
                assert isinstance(ts, str) and ts.isdigit() and isinstance(line, str)
        self.pushes.append(body)
        return web.Response(status=204)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for body in self.pushes
            for stream in body["streams"]
            for _ts, line in stream["values"]
        ]

    @property
    def labels(self) -> list[dict[str, str]]:
        return [stream["stream"] for body in self.pushes for stream in body["streams"]]


class FakeConsul(HttpFake):
    """The agent endpoints natsgw uses: register, deregister, read one service."""

    def __init__(self) -> None:
        super().__init__()
        self.services: dict[str, dict[str, Any]] = {}
        self.registrations: list[dict[str, Any]] = []
        self.deregistrations: list[str] = []
        self.app.router.add_put("/v1/agent/service/register", self._register)
        self.app.router.add_put("/v1/agent/service/deregister/{id}", self._deregister)
        self.app.router.add_get("/v1/agent/service/{id}", self._service)

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.registrations.append(body)
        self.services[body["ID"]] = body
        return web.Response(status=200)

    async def _deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        self.deregistrations.append(service_id)
        if self.services.pop(service_id, None) is None:
            return web.Response(status=404, text="Unknown service ID")
        return web.Response(status=200)

    async def _service(self, request: web.Request) -> web.Response:
        service = self.services.get(request.match_info["id"])
        if service is None:
            return web.Response(status=404, text="unknown service ID")
        return web.json_response({"ID": service["ID"], "Service": service["Name"]})


# -- keys and certificates ------------------------------------------------------------------------


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    other_client_cert: Path
    other_client_key: Path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a stranger."""

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec_key()
    ca = _cert("natsgw test CA", ca_key, None, ca_key, ca=True)
    server_key = ec_key()
    server = _cert("localhost", server_key, ca.subject, ca_key, server=True)
    client_key = ec_key()
    client = _cert("client-alice", client_key, ca.subject, ca_key)
    other_ca_key = ec_key()
    other_ca = _cert("other CA", other_ca_key, None, other_ca_key, ca=True)
    other_client_key = ec_key()
    other_client = _cert("mallory", other_client_key, other_ca.subject, other_ca_key)
    return Pki(
        ca_cert=write("ca.pem", cert_pem(ca)),
        server_cert=write("server.pem", cert_pem(server)),
        server_key=write("server.key", private_pem(server_key)),
        client_cert=write("client.pem", cert_pem(client)),
        client_key=write("client.key", private_pem(client_key)),
        other_ca_cert=write("other-ca.pem", cert_pem(other_ca)),
        other_client_cert=write("other-client.pem", cert_pem(other_client)),
        other_client_key=write("other-client.key", private_pem(other_client_key)),
    )


def grpcio_unary(channel: Any, method: str, request: Any, response_type: Any, **kwargs: Any) -> Any:
    """A plain grpcio unary call on ``/isa.nats.NATSService/<method>`` (blocking: run in a thread).

    Messages are serialized by natsgw's generated dataclasses (standard protobuf wire format), so
    the client side needs no generated grpcio stubs.
    """
    call = channel.unary_unary(
        f"/isa.nats.NATSService/{method}",
        request_serializer=bytes,
        response_deserializer=response_type.parse,
    )
    return call(request, **kwargs)
