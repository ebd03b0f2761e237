"""The options and settings every command that reads the daemon's settings shares: `--config`,
`--server-url`, `--username`, `--handlers-dir`, `--log-level`, and the settings they make.

A module of its own, below the parser (``main``) and the commands' modules, so that a command
module imports it without importing the parser that imports the command modules.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..settings import NodeSettings, load_settings

LOG_LEVELS = ["debug", "info", "warning", "error"]


class SettingsProblem(ConfigError):
    """A ConfigError from the settings themselves (printed as `config:`, not as the command's)."""


def node_settings(args: argparse.Namespace, *, need_password: bool = False, **extra: Any) -> NodeSettings:
    """The daemon's settings from --config, the environment and the command line."""
    overrides: dict[str, Any] = {
        "server_url": getattr(args, "server_url", None),
        "username": getattr(args, "username", None),
        "log_level": getattr(args, "log_level", None),
    }
    if getattr(args, "handlers_dir", None):
        overrides["handler_dirs"] = [Path(d) for d in args.handlers_dir]
    overrides.update(extra)
    try:
        settings = load_settings(NodeSettings, getattr(args, "config", None), **overrides)
        if need_password:
            settings.resolved_password()
    except ConfigError as e:
        raise SettingsProblem(e.problems) from None
    return settings


def node_options(p: argparse.ArgumentParser, *, handlers: bool = True, log_level: bool = True) -> None:
    """The options every command that reads the daemon's settings takes."""
    p.add_argument("--config", metavar="FILE", help="TOML settings file (see config/ufdl-node.toml; "
                   "`ufdl-node init` writes one)")
    p.add_argument("--server-url", metavar="URL", help="the UFDL server (overrides server_url)")
    p.add_argument("--username", metavar="NAME", help="the user to log in as (overrides username); the "
                   "password comes from the settings or UFDL_NODE_PASSWORD")
    if handlers:
        p.add_argument("--handlers-dir", action="append", metavar="DIR",
                       help="handler directory (repeatable; in place of handler_dirs, after the "
                       "built-in handlers)")
    if log_level:
        p.add_argument("--log-level", choices=LOG_LEVELS, help="override log_level")
