"""The image's defaults, taken from docker/Dockerfile itself, run through `natsgw serve`.

No container engine runs in CI, so these check what the image would do with its ENV and
HEALTHCHECK: started with the defaults it stops with one line naming the setting to choose; told
to trust remote callers it serves, and its health check follows NATSGW_HTTP_PORT.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.integration._served import free_port, serving

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def image_env() -> dict[str, str]:
    """The final stage's ENV, as `docker run` would set it."""
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    block = re.search(r"^ENV (.+?)(?<!\\)\n", final, re.MULTILINE | re.DOTALL)
    assert block is not None
    return dict(item.split("=", 1) for item in shlex.split(block[1].replace("\\\n", " ")))


def healthcheck() -> list[str]:
    match = re.search(r"^HEALTHCHECK .*?CMD (\[[^\n]*\])$", DOCKERFILE, re.MULTILINE | re.DOTALL)
    assert match is not None
    command: list[str] = json.loads(match[1])
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]


def clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


def test_defaults_stop_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = clean_env(**image_env()) | {"NATSGW_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "natsgw", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "NATSGW_AUTH_MODE" in lines[0] and "NATSGW_TRUSTED_ALLOW_REMOTE=true" in lines[0]


def test_serves_when_told_and_the_health_check_follows_the_http_port(tmp_path: Path) -> None:
    http_port = free_port()
    env = image_env() | {
        "NATSGW_TRUSTED_ALLOW_REMOTE": "true",
        "NATSGW_HTTP_PORT": str(http_port),
        "NATSGW_DATA_DIR": str(tmp_path / "data"),
    }
    del env["GRPC_PORT"]  # serving() picks a free one
    with serving(tmp_path, **env) as gateway:

        def check(**override: str) -> int:
            run_env = clean_env(**env, GRPC_PORT=str(gateway.port)) | override
            return subprocess.run(healthcheck(), env=run_env, timeout=30).returncode

        assert check() == 0
        assert check(NATSGW_HTTP_PORT=str(free_port())) != 0  # nothing there: unhealthy
        assert check(NATSGW_HTTP_PORT="") == 0  # side port off: the gRPC port is checked
        assert check(NATSGW_HTTP_PORT="", GRPC_PORT=str(free_port())) != 0


def test_dockerignore_keeps_local_environments_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".nox", ".git"} <= set(ignored)


def _published_ports(compose: str) -> list[str]:
    """Every "host:container" port mapping in a compose file (both list styles)."""
    found = re.findall(r'^\s+- "([^"]+)"\s*$', compose, re.MULTILINE)
    for inline in re.findall(r"^\s+ports: \[(.+)\]\s*$", compose, re.MULTILINE):
        found += re.findall(r'"([^"]+)"', inline)
    return found


def test_compose_files_keep_trusted_ports_on_loopback_and_jetstream_data_in_volumes() -> None:
    """Both compose files run natsgw in trusted mode: a port published on every interface would
    let any machine act as any user. NATS's JetStream store must survive the container."""
    for name in ("compose.yaml", "compose-cluster.yaml"):
        compose = (ROOT / "docker" / name).read_text()
        assert 'NATSGW_TRUSTED_ALLOW_REMOTE: "true"' in compose, name
        ports = _published_ports(compose)
        assert ports, f"{name}: no published port found"
        assert all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
        assert re.search(r"^volumes:\n(\s+\S+-data:\n?)+", compose, re.MULTILINE), name
        assert ":/data" in compose, name
