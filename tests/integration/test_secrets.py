"""No configured secret ever appears in logs, `check-config`, error answers or metrics.

The gateway runs as operators run it (`python -m natsgw serve`, JSON logs on stderr) with every
secret set: NATS password and token (in the URL and in variables), Loki URL userinfo, JWKS URL
userinfo, the ack-token secret and the Consul token. Then everything it printed or answered is
scanned for each secret.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import jwt

from natsgw.config import Settings
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.ops.secrets import mask_text, mask_url
from tests.integration._security import FakeLoki, free_port, private_pem, rsa_key

SECRETS = {
    "NATS URL password": "natsUrlPw-7f3a9c",
    "NATS URL token": "natsUrlToken-51d2e8",
    "NATS_PASSWORD": "natsVarPw-0b8e44",
    "NATS_TOKEN": "natsVarToken-c96a1d",
    "LOKI_URL password": "lokiPw-2e7f10",
    "JWKS URL password": "jwksPw-9a4c3b",
    "NATSGW_ACK_TOKEN_SECRET": "ackSecret-6d1f0e2b7c",
    "NATSGW_CONSUL_TOKEN": "consulToken-8b3e5a",
}


def _leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def test_mask_url_and_text() -> None:
    assert mask_url("nats://u:pw@h:4222") == "nats://u:***@h:4222"
    assert mask_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert mask_url("http://h:80/x?y=1") == "http://h:80/x?y=1"
    assert mask_text("failed: GET http://a:b@c/d, then tls://t@e:1") == (
        "failed: GET http://a:***@c/d, then tls://***@e:1"
    )


def test_settings_repr_shows_no_secret() -> None:
    settings = Settings(
        nats_urls=(f"nats://u:{SECRETS['NATS URL password']}@h:4222",),
        nats_password=SECRETS["NATS_PASSWORD"],
        nats_token=SECRETS["NATS_TOKEN"],
        loki_url=f"http://l:{SECRETS['LOKI_URL password']}@h",
        jwt_jwks_url=f"http://j:{SECRETS['JWKS URL password']}@h/k",
        ack_token_secret=SECRETS["NATSGW_ACK_TOKEN_SECRET"],
        consul_token=SECRETS["NATSGW_CONSUL_TOKEN"],
    )
    assert _leaks(repr(settings)) == [], repr(settings)
    assert "nats://u:***@h:4222" in repr(settings)


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "natsgw", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_no_secret_is_printed_or_answered(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    loki = FakeLoki()
    await loki.start()
    grpc_port, http_port, closed = free_port(), free_port(), free_port()
    host = nats_server.address.split("://", 1)[1]  # no credentials: the test adds its own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS", "GRPC_", "LOKI"))}
    env |= {
        "NATS_URLS": f"nats://natsuser:{SECRETS['NATS URL password']}@{host},"
        f"nats://{SECRETS['NATS URL token']}@{host}",
        "NATS_USERNAME": "natsuser",
        "NATS_PASSWORD": SECRETS["NATS_PASSWORD"],
        "NATS_TOKEN": SECRETS["NATS_TOKEN"],
        "NATSGW_NATS_MONITOR_URL": nats_server.monitor_url,
        "LOKI_URL": f"http://loki:{SECRETS['LOKI_URL password']}@127.0.0.1:{loki.port}",
        "NATSGW_AUTH_MODE": "jwt",
        "NATSGW_JWT_JWKS_URL": f"http://jwks:{SECRETS['JWKS URL password']}@127.0.0.1:{closed}/k",
        "NATSGW_JWT_AUDIENCE": "natsgw",
        "NATSGW_ACK_TOKEN_SECRET": SECRETS["NATSGW_ACK_TOKEN_SECRET"],
        "CONSUL_ENABLED": "true",
        "CONSUL_PORT": str(closed),
        "NATSGW_CONSUL_TOKEN": SECRETS["NATSGW_CONSUL_TOKEN"],
        "NATSGW_CONSUL_CHECK_INTERVAL": "0.5",
        "GRPC_PORT": str(grpc_port),
        "NATSGW_HTTP_PORT": str(http_port),
        "NATSGW_LOG_LEVEL": "debug",
        "NATSGW_LOG_FORMAT": "json",
        "NATSGW_DATA_DIR": str(tmp_path / "data"),
    }
    try:
        code, shown = await _run("check-config", env=env)
        assert code == 0, shown
        assert "natsuser:***@" in shown  # the URL is shown, masked
        assert _leaks(shown) == [], shown

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "natsgw", "serve", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        logged: list[str] = []
        deadline = time.monotonic() + 30
        while not any('"natsgw_started"' in line for line in logged):
            assert time.monotonic() < deadline, "".join(logged)
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "".join(logged)
            logged.append(line.decode())
        assert any("natsuser:***@" in line for line in logged)  # natsgw_started names them

        token = jwt.encode(
            {"sub": "alice", "aud": "natsgw", "exp": time.time() + 60},
            private_pem(rsa_key()), algorithm="RS256", headers={"kid": "k1"},
        )  # fmt: skip
        answers: list[str] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            publish = channel.unary_unary("/isa.nats.NATSService/Publish")
            for _ in range(2):
                try:
                    await publish(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    answers.append(f"{exc.code()} {exc.details()}")
            health = channel.unary_unary("/isa.nats.NATSService/HealthCheck")
            answers.append(repr(await health(b"\x08\x01", timeout=10)))  # deep_check
        assert answers[0].startswith("StatusCode.UNAVAILABLE"), answers
        assert "jwks:***@" in answers[0], answers  # it names what failed, masked
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{http_port}/metrics") as response,
        ):
            metrics = await response.text()
        await asyncio.sleep(1.5)  # consul retries, Loki pushes
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        logs = "".join(logged) + rest.decode()
        print(f"\nscanned {len(logs)} bytes of logs, {len(shown)} of check-config, "
              f"{sum(map(len, answers))} of answers, {len(metrics)} of metrics")  # fmt: skip
        assert _leaks(logs) == [], logs
        assert _leaks("\n".join(answers)) == [], answers
        assert _leaks(metrics) == []
        assert _leaks(str(loki.events)) == []
    finally:
        await loki.stop()
