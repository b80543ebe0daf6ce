"""Log lines of processes sharing one stderr never interleave (``NATSGW_WORKERS``: the supervisor
and every worker write JSON lines to the same pipe).

Found by the flaky test_workers.py test of a killed worker (issue #19 item 6): a worker's
``natsgw_stopped`` event landed in the middle of another worker's line, so neither parsed.
``print()`` writes a message and its newline separately, and with ``PYTHONUNBUFFERED=1`` (as
in this test environment, and in many container images) each is its own system call; one
``write`` of the whole line is atomic on a pipe (up to PIPE_BUF, 4096 bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

_WRITER = """
import structlog, sys
from natsgw.ops.logs import configure
configure("info", "json")
log = structlog.get_logger("t")
for i in range(20000):
    log.info("line", worker=int(sys.argv[1]), i=i, pad="x" * 150)
"""


def test_concurrent_processes_write_whole_json_lines_to_one_pipe() -> None:
    writers = " & ".join(f'"{sys.executable}" -c "$W" {n}' for n in range(3))
    done = subprocess.run(
        ["bash", "-c", f"{writers} & wait"],
        env={"W": _WRITER, "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stderr.splitlines()
    corrupt = 0
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            corrupt += 1
    print(f"\ninterleaved log lines from 3 processes on one pipe: {corrupt}/{len(lines)}")
    assert corrupt == 0
    assert len(lines) == 60000
