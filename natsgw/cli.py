"""``natsgw`` command line: ``natsgw serve`` runs the gateway with settings from the environment."""

from __future__ import annotations

import argparse
import asyncio
import sys

from natsgw import __version__
from natsgw.config import ConfigError, Settings
from natsgw.ops.embedded import EmbeddedServerError
from natsgw.ops.logs import configure
from natsgw.ops.redact import shown_setting


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
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"natsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)

    if args.command == "check-config":
        for name in settings.__slots__:
            print(f"{name} = {shown_setting(name, getattr(settings, name))!r}")
        return 0

    from natsgw.server import Gateway  # heavy imports only when serving

    try:
        asyncio.run(Gateway(settings).run())
    except ConfigError as exc:  # files named by settings (tokens, keys, quotas) are read at start
        print(f"natsgw: configuration error: {exc}", file=sys.stderr)
        return 2
    except EmbeddedServerError as exc:
        print(f"natsgw: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
