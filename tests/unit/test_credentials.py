"""The embedded nats-server's generated credentials (natsgw.ops.credentials): pure file handling."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from natsgw.ops.credentials import (
    CREDENTIALS_NAME,
    CredentialsError,
    NatsCredentials,
    generate,
    load_or_create,
    write_private,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_once_private_and_reused(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    path = tmp_path / CREDENTIALS_NAME
    assert mode(path) == 0o600
    assert load_or_create(tmp_path) == first
    assert len(first.token) >= 32
    assert [p.name for p in tmp_path.iterdir()] == [CREDENTIALS_NAME]  # no temporary file left


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    """link(), not rename(): whoever comes second reads the first one's file."""
    results: list[NatsCredentials] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(load_or_create(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1


def test_a_readable_file_is_tightened(tmp_path: Path) -> None:
    creds = load_or_create(tmp_path)
    path = tmp_path / CREDENTIALS_NAME
    path.chmod(0o644)
    assert load_or_create(tmp_path) == creds
    assert mode(path) == 0o600


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '{"user": "natsgw"}',
        '{"token": "short"}',
        '{"token": "a b' + "x" * 40 + '"}',
    ],
)
def test_an_invalid_file_stops_start_up_saying_what_to_do(tmp_path: Path, content: str) -> None:
    (tmp_path / CREDENTIALS_NAME).write_text(content)
    with pytest.raises(CredentialsError, match="remove it"):
        load_or_create(tmp_path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"token": "p" * 43}))
    (tmp_path / CREDENTIALS_NAME).symlink_to(target)
    with pytest.raises(CredentialsError, match="symbolic link"):
        load_or_create(tmp_path)


def test_the_token_is_never_in_a_repr() -> None:
    creds = generate()
    assert creds.token not in repr(creds)
    assert creds.url("nats://127.0.0.1:4222") == f"nats://{creds.token}@127.0.0.1:4222"
    route = creds.route_url("nats-route://127.0.0.1:6222")
    assert route == f"nats-route://natsgw:{creds.token}@127.0.0.1:6222"
    assert creds.url("nats://u:p@h:1") == "nats://u:p@h:1"  # already has userinfo


def test_write_private_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "nats-server.conf"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
