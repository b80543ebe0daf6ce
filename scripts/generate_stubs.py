"""Regenerate natsgw's committed wire stubs from api/nats_service.proto.

Two generators, one source:
- betterproto2 dataclasses with grpclib server bases and async client stubs (what handlers use);
- Google's upb ``_pb2`` module (the fast codec for hot messages and the descriptors that server
  reflection serves), plus the file with its comments (``nats_service.binpb``) for reflection.

``--check DIR`` writes into DIR instead, so a test can compare the output with the committed files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "api"
PROTO = PROTO_DIR / "nats_service.proto"
TARGET = ROOT / "natsgw" / "_generated"


def generate(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}"]
    # protoc finds its plugin on PATH: the one installed beside this interpreter, even when the
    # virtual environment is not activated.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [
            *protoc,
            f"--python_betterproto2_out={out}",
            "--python_betterproto2_opt=server_generation=async,client_generation=async",
            str(PROTO),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    subprocess.run(
        [*protoc, f"--python_out={out}", f"--pyi_out={out}", str(PROTO)],
        check=True,
    )
    # The same file with its comments, for server reflection (natsgw.wire.reflection).
    subprocess.run(
        [
            *protoc,
            "--include_source_info",
            f"--descriptor_set_out={out / 'nats_service.binpb'}",
            str(PROTO),
        ],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=TARGET, help="output folder")
    args = parser.parse_args()
    generate(args.out)


if __name__ == "__main__":
    main()
