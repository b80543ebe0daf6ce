"""Every script in examples/ runs to success against `natsgw serve` on its embedded default.

The grpcio stubs are made with the exact one-liner the README documents, so that stays true too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration._served import Served, serving

EXAMPLES = ROOT / "examples"

#: The README's one-liner, run from the repository root (output directory varies).
GRPCIO_STUBS = [
    sys.executable, "-m", "grpc_tools.protoc", "-Iapi",
    "--python_out={out}", "--grpc_python_out={out}", "api/nats_service.proto",
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("served")) as gateway:
        yield gateway


def run_example(script: Path, served: Served, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(served.port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_grpcio_example_with_stubs_from_the_readme_one_liner(
    served: Served, tmp_path: Path
) -> None:
    copy = tmp_path / "nats_client_example.py"
    shutil.copy(EXAMPLES / "nats_client_example.py", copy)
    out = str(tmp_path)
    subprocess.run([a.format(out=out) for a in GRPCIO_STUBS], check=True, cwd=ROOT)
    result = run_example(copy, served, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all examples passed" in result.stdout
    for area in ("Consume 3 + AckMessages", "KVWatch saw", "ObjectGetStream: content identical"):
        assert area in result.stdout


def test_natsgw_client_example(served: Served, tmp_path: Path) -> None:
    result = run_example(EXAMPLES / "natsgw_client_example.py", served, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all examples passed" in result.stdout


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py") if "_pb2" not in p.name) == [
        "nats_client_example.py",
        "natsgw_client_example.py",
    ]
