"""``natsgw`` command line: ``natsgw serve`` runs the gateway with settings from the environment.

The client commands (``pub``, ``kv`` ...) import only the client: the gateway's modules are
imported for ``serve`` and ``check-config`` alone, so a try-it command starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING

from natsgw import __version__
from natsgw.client import cli as client_cli

if TYPE_CHECKING:
    from natsgw.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="natsgw",
        description="Multi-tenant gRPC gateway in front of NATS. Configured by environment "
        "variables (see README); without NATS_URLS it starts an embedded nats-server.",
    )
    parser.add_argument("--version", action="version", version=f"natsgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway until SIGTERM/SIGINT")
    sub.add_parser("check-config", help="parse the environment and print the settings")
    client_cli.add_commands(sub)  # pub, sub, req, reply, stream, consumer, consume, kv, obj, smoke
    args = parser.parse_args(argv)
    if getattr(args, "client_command", None) is not None:
        return client_cli.run(args)
    return _gateway_command(args.command)


def _gateway_command(command: str) -> int:
    import structlog

    from natsgw.config import ConfigError, Settings, describe, unknown_variables
    from natsgw.ops.logs import configure

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"natsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    for name, suggestion in unknown_variables(os.environ):  # most likely a typo
        structlog.get_logger("natsgw.cli").warning(
            "unknown_setting",
            variable=name,
            hint=f"did you mean {suggestion}?" if suggestion else "natsgw does not read it",
        )

    if command == "check-config":
        for variable, value in describe(settings):  # secrets masked (natsgw.ops.secrets)
            print(f"{variable}={value}")
        return 0

    if settings.workers > 1:  # N serving processes under a supervisor (natsgw.ops.workers)
        from natsgw.ops.workers import supervise

        return supervise(settings)
    return _serve(settings)


def _serve(settings: Settings) -> int:
    """Exit status: 0 after a clean stop; 2 when start-up failed (one line on stderr says why,
    nothing started is left behind); 1 when the gateway stopped because it could not serve."""
    from natsgw.config import ConfigError
    from natsgw.ops.datadir import DataDirInUse
    from natsgw.ops.embedded import EmbeddedServerError
    from natsgw.server import Gateway, GatewayFailed, StartupError  # heavy imports: serve only

    try:
        asyncio.run(Gateway(settings).run())
    except ConfigError as exc:  # files named by settings (tokens, keys, quotas) are read at start
        print(f"natsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    except (StartupError, DataDirInUse, EmbeddedServerError) as exc:
        print(f"natsgw: cannot start: {_one_line(exc)}", file=sys.stderr)
        return 2
    except GatewayFailed as exc:
        print(f"natsgw: stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    return " | ".join(part.strip() for part in str(exc).splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
