"""The image stops gracefully: docker/Dockerfile's build and stop contract, and natsgw as PID 1.

No container engine runs here, so the Dockerfile is read as text (a base image supplied by
``ARG BASE_IMAGE``, an exec-form entrypoint so natsgw itself is PID 1, SIGTERM as the stop
signal, a shutdown grace that fits ``docker stop``'s 10 s), and PID 1 is reproduced with a new
PID namespace (``unshare --pid``, as a container runtime makes one): there the kernel delivers
SIGTERM only to a process that installed a handler, so an image whose PID 1 did not handle it
would sit out the stop timeout and be killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration._served import free_port
from tests.integration.test_container import DOCKERFILE, image_env

#: `docker stop`'s default wait between SIGTERM and SIGKILL.
DOCKER_STOP_TIMEOUT = 10.0
#: Make the command PID 1 of a new PID namespace; killing unshare kills it (and the namespace).
AS_PID_1 = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
NATSGW_SERVE = [sys.executable, "-m", "natsgw", "serve"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments out."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE, flags=re.MULTILINE).replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip()
    ]


def test_the_base_image_is_an_argument_with_a_default_used_by_every_stage() -> None:
    steps = instructions()
    first_from = next(i for i, (op, _) in enumerate(steps) if op == "FROM")
    args = dict(
        a.split("=", 1) for op, a in steps[:first_from] if op == "ARG" and "=" in a
    )  # only an ARG before the first FROM may name a stage's image
    assert args.get("BASE_IMAGE"), "no ARG BASE_IMAGE=<default> before the first FROM"
    stages = [a.split()[0] for op, a in steps if op == "FROM"]
    assert len(stages) == 2
    assert all(image in ("${BASE_IMAGE}", "$BASE_IMAGE") for image in stages), stages
    # How to supply one is documented beside the ARG and in docs/container.md.
    assert "--build-arg BASE_IMAGE=" in DOCKERFILE
    assert "--build-arg BASE_IMAGE=" in (ROOT / "docs" / "container.md").read_text()


def test_natsgw_is_pid_1_and_stops_on_sigterm_within_docker_stops_timeout() -> None:
    steps = dict(instructions())  # the last of each instruction counts, as in Docker
    entrypoint = json.loads(steps["ENTRYPOINT"])  # exec form: no shell between PID 1 and natsgw
    assert entrypoint[0] == "natsgw", entrypoint
    assert json.loads(steps["CMD"]) == ["serve"]
    assert steps["STOPSIGNAL"] == "SIGTERM"
    assert "HEALTHCHECK" in steps
    grace = float(image_env().get("NATSGW_SHUTDOWN_GRACE", "10"))  # natsgw's own default
    assert grace + 2 <= DOCKER_STOP_TIMEOUT, "calls' grace leaves no time to close before SIGKILL"


def _can_make_pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [*AS_PID_1, "sh", "-c", "echo $$"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "1"


needs_pid_namespace = pytest.mark.skipif(
    not _can_make_pid_namespaces(), reason="needs unshare --pid (root or user namespaces)"
)


def _pid_1_of(unshare: subprocess.Popen[bytes]) -> int:
    """The host pid of the process unshare --fork made PID 1 of the new namespace."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    deadline = time.monotonic() + 10
    while not children.read_text().split():
        assert time.monotonic() < deadline, "unshare did not fork"
        time.sleep(0.01)
    return int(children.read_text().split()[0])


@pytest.fixture
def as_pid_1(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started as PID 1 of their own PID namespace; killed if a test leaves them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_pid_namespace
def test_a_pid_1_without_a_handler_ignores_sigterm(
    as_pid_1: list[subprocess.Popen[bytes]],
) -> None:
    """The control: this namespace really has PID 1's rules, so the next test can fail."""
    proc = subprocess.Popen([*AS_PID_1, "sleep", "30"])
    as_pid_1.append(proc)
    os.kill(_pid_1_of(proc), signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(1.0)


@needs_pid_namespace
def test_natsgw_serve_as_pid_1_drains_on_sigterm_and_exits_0(
    tmp_path: Path, as_pid_1: list[subprocess.Popen[bytes]]
) -> None:
    """The image's own ENV (all interfaces, embedded nats-server, /data as a temp dir), natsgw as
    PID 1: SIGTERM ends it with status 0, having stopped its nats-server and said so in its log."""
    port, http_port = free_port(), free_port()
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env = (
        keep
        | image_env()
        | {
            "GRPC_PORT": str(port),
            "NATSGW_HTTP_PORT": str(http_port),
            "NATSGW_DATA_DIR": str(tmp_path / "data"),
            "NATSGW_TRUSTED_ALLOW_REMOTE": "true",
        }
    )
    log_path = tmp_path / "natsgw.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*AS_PID_1, *NATSGW_SERVE],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    as_pid_1.append(proc)
    natsgw = _pid_1_of(proc)

    def events() -> list[dict[str, object]]:
        lines = log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    deadline = time.monotonic() + 30
    while not any(e.get("event") == "natsgw_started" for e in events()):
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "natsgw did not start in 30 s"
        time.sleep(0.05)
    status = Path(f"/proc/{natsgw}/status").read_text()
    assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.MULTILINE), "natsgw is not PID 1"

    started = time.monotonic()
    os.kill(natsgw, signal.SIGTERM)
    code = proc.wait(DOCKER_STOP_TIMEOUT)
    took = time.monotonic() - started
    print(f"\nnatsgw as PID 1: SIGTERM -> exit {code} in {took:.2f} s")
    assert code == 0, log_path.read_text()
    names = [e.get("event") for e in events()]
    assert "natsgw_stopping" in names and "natsgw_stopped" in names, names
    assert _lock_is_free(tmp_path / "data")


def _lock_is_free(data_dir: Path) -> bool:
    """The data directory's lock can be taken again: natsgw and its nats-server are gone."""
    with (data_dir / "natsgw.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True
