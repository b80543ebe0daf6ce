"""`natsgw smoke` and the try-it commands, run as a user runs them against `natsgw serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from natsgw.client.smoke import ALL_RPCS
from tests.integration._served import Served, serving

TOKEN = "smoke-token-" + "s" * 24


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("served")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def token_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("token")
    tokens = directory / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"token": TOKEN, "user_id": "operator"}]}))
    with serving(
        directory, NATSGW_AUTH_MODE="token", NATSGW_AUTH_TOKENS_FILE=str(tokens)
    ) as gateway:
        yield gateway


def natsgw(served: Served, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsgw", *args, "--target", served.target],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def background(served: Served, *args: str) -> subprocess.Popen[str]:
    """Start a long-running command; returns once it says it is subscribed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsgw", *args, "--target", served.target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith(("subscribed", "answering")), first + proc.stderr.read()
    return proc


def test_smoke_passes_with_one_line_per_rpc_and_cleans_up(served: Served) -> None:
    result = natsgw(served, "smoke", "--user-id", "ops")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == list(ALL_RPCS)
    assert all(line.startswith("ok") for line in lines)
    # Nothing it made is left: no stream, no KV bucket, no object.
    assert json.loads(natsgw(served, "stream", "ls", "--json", "--user-id", "ops").stdout) == {
        "streams": []
    }
    objects = natsgw(served, "obj", "ls", "natsgw-smoke", "--json", "--user-id", "ops")
    assert json.loads(objects.stdout) == {"objects": []}


def test_smoke_with_wrong_credentials_fails_and_says_why(token_served: Served) -> None:
    bad = natsgw(token_served, "smoke", "--token", "not-a-valid-token-" + "x" * 20)
    assert bad.returncode == 1
    assert "FAIL  Publish" in bad.stdout and "UNAUTHENTICATED" in bad.stdout
    assert bad.stdout.startswith("ok    HealthCheck")  # needs no identity: the gateway is up
    good = natsgw(token_served, "smoke", "--token", TOKEN)
    assert good.returncode == 0, good.stdout


def test_smoke_against_nothing_fails() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "natsgw", "smoke", "--target", "127.0.0.1:1", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "FAIL  HealthCheck" in result.stdout and "UNAVAILABLE" in result.stdout


def test_pub_sub_and_request_reply(served: Served) -> None:
    sub = background(served, "sub", "greet.*", "--count", "2", "--json", "--user-id", "u1")
    published = natsgw(served, "pub", "greet.en", "hi {{Count}}", "--count", "2", "--user-id", "u1")
    assert published.stdout.strip() == "published 2 message(s) to greet.en"
    out, _ = sub.communicate(timeout=30)
    messages = [json.loads(line) for line in out.splitlines()]
    assert [(m["subject"], m["data"], m["sequence"]) for m in messages] == [
        ("greet.en", "hi 1", 1),
        ("greet.en", "hi 2", 2),
    ]

    replier = background(served, "reply", "svc.echo", "--echo", "--count", "1", "--user-id", "u1")
    answer = natsgw(served, "req", "svc.echo", "ping", "--user-id", "u1")
    assert (answer.returncode, answer.stdout.strip()) == (0, "ping")
    replier.wait(30)
    nobody = natsgw(served, "req", "svc.nobody", "x", "--timeout", "1", "--user-id", "u1")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr


def test_streams_consume_kv_and_objects(served: Served, tmp_path: Path) -> None:
    me = ("--user-id", "u2")
    assert natsgw(served, "stream", "add", "jobs", "--subjects", "jobs.>", *me).returncode == 0
    natsgw(served, "pub", "jobs.a", "work {{Count}}", "--count", "3", *me)
    assert "jobs" in natsgw(served, "stream", "ls", *me).stdout
    info = natsgw(served, "stream", "info", "jobs", "--json", *me)
    assert json.loads(info.stdout)["stream"]["state"]["messages"] == 3
    consumed = natsgw(served, "consume", "jobs", "w", "--count", "3", "--json", *me)
    assert [json.loads(line)["data"] for line in consumed.stdout.splitlines()] == [
        "work 1",
        "work 2",
        "work 3",
    ]
    again = natsgw(served, "stream", "info", "jobs", "--json", *me)
    assert json.loads(again.stdout)["stream"]["state"]["consumer_count"] == 1
    assert natsgw(served, "stream", "rm", "jobs", *me).returncode == 0
    missing = natsgw(served, "stream", "info", "jobs", *me)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

    assert natsgw(served, "kv", "put", "cfg", "color", "red", *me).stdout.strip() == "color @ 1"
    assert natsgw(served, "kv", "get", "cfg", "color", *me).stdout.strip() == "color @ 1: red"
    watched = natsgw(served, "kv", "watch", "cfg", "--count", "1", "--json", *me)
    assert json.loads(watched.stdout)["value"] == "red"
    assert natsgw(served, "kv", "get", "cfg", "nope", *me).returncode == 1

    source = tmp_path / "notes.txt"
    source.write_bytes(b"x" * 300_000)
    assert natsgw(served, "obj", "put", "docs", str(source), *me).returncode == 0
    listed = json.loads(natsgw(served, "obj", "ls", "docs", "--json", *me).stdout)
    assert [(o["name"], o["size"]) for o in listed["objects"]] == [("notes.txt", 300_000)]
    target = tmp_path / "copy.txt"
    assert natsgw(served, "obj", "get", "docs", "notes.txt", "-o", str(target), *me).returncode == 0
    assert target.read_bytes() == source.read_bytes()
