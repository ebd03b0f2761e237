"""The `ufdl-node` command: run, server, dry-run, demo, handlers, hwinfo, check-config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .errors import ConfigError
from .logs import configure_logging
from .settings import ServerSettings, load_settings


def _server(args: argparse.Namespace) -> int:
    from .server import serve

    settings = load_settings(ServerSettings, args.config, host=args.host, port=args.port,
                             data_dir=args.data_dir, log_level=args.log_level)
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ufdl-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("server", help="run the embedded UFDL job server in the foreground")
    p.add_argument("--config", help="TOML file with server settings")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", help="where the database and outputs live")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for problem in e.problems:
            print(f"ufdl-node: config: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
