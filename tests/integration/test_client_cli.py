"""`natsgw smoke` and the try-it commands, run as a user runs them against `natsgw serve`."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from natsgw.client.smoke import ALL_RPCS
from tests.integration._served import Served, serving

TOKEN = "smoke-token-" + "s" * 24
NATSGW = (sys.executable, "-m", "natsgw")


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


def client_env(**extra: str) -> dict[str, str]:
    """The test's environment without client settings a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATSGW_")}
    return env | extra


def natsgw(
    served: Served,
    *args: str,
    timeout: float = 60,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "natsgw", *args, "--target", served.target],
        capture_output=True,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        timeout=timeout,
        env=env or client_env(),
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def background(served: Served, *args: str) -> subprocess.Popen[str]:
    """Start a long-running command; returns once it says it is subscribed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsgw", *args, "--target", served.target],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(),
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


def _every_rpc_has_a_line(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert sorted(line.split()[1] for line in lines) == sorted(ALL_RPCS), result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return lines


@pytest.mark.parametrize("token", ["", "not-a-valid-token-" + "x" * 20])
def test_smoke_without_or_with_a_wrong_token_reports_every_rpc(
    token_served: Served, token: str
) -> None:
    env = client_env(NATSGW_TOKEN=token) if token else None
    bad = natsgw(token_served, "smoke", env=env)
    lines = _every_rpc_has_a_line(bad)
    assert lines[0].startswith("ok    HealthCheck")  # needs no identity: the gateway is up
    assert all(line.startswith("FAIL") for line in lines[1:])
    refused = [line for line in lines if "UNAUTHENTICATED" in line]
    assert len(refused) >= len(ALL_RPCS) - 3  # the rest did not run: what they need failed
    assert "NATSGW_TOKEN" in bad.stderr and "--token-file" in bad.stderr
    good = natsgw(token_served, "smoke", env=client_env(NATSGW_TOKEN=TOKEN))
    assert good.returncode == 0, good.stdout


def test_smoke_against_nothing_reports_every_rpc() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "natsgw", "smoke", "--target", "127.0.0.1:1", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=client_env(),
    )
    lines = _every_rpc_has_a_line(result)
    assert lines[0].startswith("FAIL  HealthCheck") and "UNAVAILABLE" in lines[0]
    assert all("not run" in line for line in lines[1:])
    assert "--target" in result.stderr


def test_smoke_json_and_its_clean_up_is_not_audited_as_failed(served: Served) -> None:
    log = Path(served.env["NATSGW_DATA_DIR"]).parent / "natsgw.log"
    start = log.stat().st_size
    result = natsgw(served, "smoke", "--json", "--user-id", "audited")
    assert result.returncode == 0, result.stdout + result.stderr
    *records, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rpc"] for r in records] == list(ALL_RPCS)
    assert all(r["ok"] and r["ms"] >= 0 for r in records) and summary == {"passed": True}
    with log.open() as handle:
        handle.seek(start)
        events = [json.loads(line) for line in handle if line.startswith("{")]
    audit = [e for e in events if e.get("event") == "audit" and e.get("who") == "audited"]
    assert audit, "no audit events seen"
    assert [e for e in audit if e["outcome"] != "ok"] == []


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


def test_pub_reads_stdin_and_files_of_any_size(served: Served, tmp_path: Path) -> None:
    me = ("--user-id", "u3")
    big = b"y" * (200 * 1024)  # more than one command-line argument may hold (128 KiB)
    sub = background(served, "sub", "blobs.*", "--count", "2", "--json", *me)
    piped = natsgw(served, "pub", "blobs.piped", *me, stdin=big)
    assert piped.returncode == 0, piped.stderr
    source = tmp_path / "body.txt"
    source.write_bytes(b"from a file")
    assert natsgw(served, "pub", "blobs.file", f"@{source}", *me).returncode == 0
    out, _ = sub.communicate(timeout=30)
    got = [json.loads(line) for line in out.splitlines()]
    assert [(m["subject"], len(m["data"])) for m in got] == [
        ("blobs.piped", len(big)),
        ("blobs.file", len(b"from a file")),
    ]
    missing = natsgw(served, "pub", "blobs.x", f"@{tmp_path / 'nope'}", *me)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_local_file_errors_are_local(served: Served, tmp_path: Path) -> None:
    result = natsgw(served, "obj", "put", "docs", str(tmp_path / "missing.bin"), "--user-id", "u4")
    assert result.returncode == 2
    assert "missing.bin" in result.stderr and "No such file" in result.stderr
    assert "UNAVAILABLE" not in result.stderr and "Traceback" not in result.stderr


def test_downloads_land_here_and_unwritable_targets_are_local(
    served: Served, tmp_path: Path
) -> None:
    me = ("--user-id", "u11")
    source = tmp_path / "r.bin"
    source.write_bytes(b"r" * 10)
    put = natsgw(served, "obj", "put", "dl", str(source), "--name", "reports/r.bin", *me)
    assert put.returncode == 0, put.stderr
    work = tmp_path / "work"
    work.mkdir()
    got = subprocess.run(
        [*NATSGW, "obj", "get", "dl", "reports/r.bin", "--target", served.target, *me],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=work,
        env=client_env(),
    )
    assert got.returncode == 0, got.stderr  # the name's last part, in this directory
    assert (work / "r.bin").read_bytes() == b"r" * 10
    assert sorted(p.name for p in work.iterdir()) == ["r.bin"]
    nowhere = tmp_path / "no-such-dir" / "r.bin"
    failed = natsgw(served, "obj", "get", "dl", "reports/r.bin", "-o", str(nowhere), *me)
    assert failed.returncode == 2, failed.stderr
    assert "not a directory" in failed.stderr and "Traceback" not in failed.stderr


def test_kv_keys_history_buckets_and_delete(served: Served) -> None:
    me = ("--user-id", "u5")
    for value in ("1", "2"):
        natsgw(served, "kv", "put", "app", "mode", value, *me)
    natsgw(served, "kv", "put", "app", "other", "x", *me)
    assert natsgw(served, "kv", "keys", "app", *me).stdout.split() == ["mode", "other"]
    history = natsgw(served, "kv", "history", "app", "mode", "--json", *me).stdout.splitlines()
    assert [json.loads(line)["value"] for line in history] == ["1", "2"]
    listed = natsgw(served, "kv", "ls", *me)
    assert "app" in listed.stdout and " B" in listed.stdout
    assert natsgw(served, "kv", "del", "app", "other", *me).returncode == 0
    assert natsgw(served, "kv", "keys", "app", "--json", *me).stdout.strip() == (
        '{"bucket": "app", "keys": ["mode"]}'
    )
    missing = natsgw(served, "kv", "keys", "no-such-bucket", *me)
    assert missing.returncode == 1 and "no-such-bucket" in missing.stderr


def test_objects_info_list_and_remove_with_human_sizes(served: Served, tmp_path: Path) -> None:
    me = ("--user-id", "u5")
    source = tmp_path / "report.bin"
    source.write_bytes(b"z" * 3 * 1024 * 1024)
    assert natsgw(served, "obj", "put", "files", str(source), *me).returncode == 0
    info = natsgw(served, "obj", "info", "files", "report.bin", *me)
    assert "3.0 MiB" in info.stdout and "SHA-256=" in info.stdout
    assert "3.0 MiB" in natsgw(served, "obj", "ls", "files", *me).stdout
    assert natsgw(served, "obj", "rm", "files", "report.bin", *me).returncode == 0
    gone = natsgw(served, "obj", "info", "files", "report.bin", *me)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    empty = natsgw(served, "obj", "ls", "files", *me)  # the bucket stays, with nothing in it
    assert empty.returncode == 0 and "no objects in bucket files" in empty.stdout
    for args in (("obj", "ls", "no-such-files"), ("obj", "ls", "no-such-files", "--json")):
        missing = natsgw(served, *args, *me)  # a typo is not an empty bucket
        assert missing.returncode == 1, missing
        assert "NOT_FOUND" in missing.stderr and "'no-such-files' does not exist" in missing.stderr
        assert missing.stdout == ""


def test_consumers_list_show_and_remove(served: Served) -> None:
    me = ("--user-id", "u5")
    natsgw(served, "stream", "add", "orders", "--subjects", "orders.>", *me)
    natsgw(served, "pub", "orders.new", "o1", *me)
    assert natsgw(served, "consume", "orders", "billing", "--count", "1", *me).returncode == 0
    assert "billing" in natsgw(served, "consumer", "ls", "orders", *me).stdout
    detail = json.loads(
        natsgw(served, "consumer", "info", "orders", "billing", "--json", *me).stdout
    )
    assert detail["consumer"]["name"] == "billing"
    assert natsgw(served, "consumer", "rm", "orders", "billing", *me).returncode == 0
    assert "no consumers" in natsgw(served, "consumer", "ls", "orders", *me).stdout


def test_consume_with_a_count_hands_the_rest_back_at_once(served: Served) -> None:
    """Before: messages 3-5 came back only after ack_wait (30 s)."""
    me = ("--user-id", "u6")
    natsgw(served, "stream", "add", "q", "--subjects", "q.>", *me)
    natsgw(served, "pub", "q.a", "m{{Count}}", "--count", "5", *me)
    first = natsgw(served, "consume", "q", "w", "--count", "2", "--window", "5", "--json", *me)
    assert [json.loads(line)["data"] for line in first.stdout.splitlines()] == ["m1", "m2"]
    rest = natsgw(served, "consume", "q", "w", "--count", "3", "--json", *me, timeout=20)
    assert [json.loads(line)["data"] for line in rest.stdout.splitlines()] == ["m3", "m4", "m5"]


def test_output_into_a_closed_pipe_ends_quietly(served: Served) -> None:
    me = ("--user-id", "u7")
    natsgw(served, "pub", "p.a", "x", *me)
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsgw", "stream", "ls", "--target", served.target, *me],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that already left
    stderr = proc.stderr.read().decode()
    assert proc.wait(30) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_bare_port_targets_this_machine(served: Served) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "natsgw", "kv", "put", "t", "k", "v", "--target", str(served.port)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=client_env(NATSGW_USER_ID="u8"),
    )
    assert (result.returncode, result.stdout.strip()) == (0, "k @ 1"), result.stderr


def test_the_token_from_a_file_or_the_environment_and_a_warning_for_the_flag(
    token_served: Served, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    by_file = natsgw(token_served, "kv", "put", "t", "k", "v", "--token-file", str(token_file))
    assert by_file.returncode == 0 and by_file.stderr == "", by_file.stderr
    by_env = natsgw(
        token_served, "kv", "get", "t", "k", env=client_env(NATSGW_TOKEN_FILE=str(token_file))
    )
    assert by_env.stdout.strip() == "k @ 1: v", by_env.stderr
    flagged = natsgw(token_served, "kv", "get", "t", "k", "--token", TOKEN)
    assert flagged.returncode == 0 and "visible to other users" in flagged.stderr
    assert TOKEN not in flagged.stderr
    refused = natsgw(token_served, "kv", "get", "t", "k", env=client_env(NATSGW_TOKEN="wrong"))
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert "NATSGW_TOKEN" in refused.stderr and "--token-file" in refused.stderr
    none = natsgw(token_served, "kv", "get", "t", "k")
    assert none.returncode == 1 and "--token-file" in none.stderr


def _with_a_terminal_for_stderr(served: Served, *args: str) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (as a person sees it); returns status and stderr."""
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "natsgw", *args, "--target", served.target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=60,
            env=client_env(),
        )
    finally:
        os.close(follower)
        reader.join(5)
        os.close(leader)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_large_transfers_show_progress_only_on_a_terminal(served: Served, tmp_path: Path) -> None:
    me = ("--user-id", "u9")
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    status, shown = _with_a_terminal_for_stderr(served, "obj", "put", "big", str(source), *me)
    assert status == 0 and "100%" in shown and "2.0 MiB / 2.0 MiB" in shown, shown
    copy = tmp_path / "copy.bin"
    status, shown = _with_a_terminal_for_stderr(
        served, "obj", "get", "big", "large.bin", "-o", str(copy), *me
    )
    assert status == 0 and "100%" in shown, shown
    assert copy.read_bytes() == source.read_bytes()
    piped = natsgw(served, "obj", "get", "big", "large.bin", "-o", str(copy), *me)
    assert piped.returncode == 0 and piped.stderr == ""  # not a terminal: no bar


def test_a_stopped_kv_watch_ends_its_call_cleanly(served: Served) -> None:
    me = ("--user-id", "u10")
    natsgw(served, "kv", "put", "live", "k", "v", *me)
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsgw", "kv", "watch", "live", "--target", served.target, *me],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "k @ 1: v"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr, stderr
