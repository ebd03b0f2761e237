"""`ufdl-node init`: write the commented example settings (and the systemd unit) where the user says.

The files are the repository's `config/ufdl-node.toml` and `systemd/ufdl-node.service`;
a wheel carries them as `ufdl_node/data/`, so that an install by pip or pipx has them too.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # ufdl_node/
CONFIG_NAME = "ufdl-node.toml"
UNIT_NAME = "ufdl-node.service"
# What the shipped unit's ExecStart names; replaced by this install's command and the
# settings file written beside it, where both are plain paths.
_SHIPPED_COMMAND = "/opt/ufdl-node/venv/bin/ufdl-node"
_SHIPPED_CONFIG = "/etc/ufdl-node/config.toml"
# Paths systemd takes as they stand: no spaces, quotes, `$` or `%` specifiers.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._+@-]+")


class InitError(Exception):
    """`init` cannot write what was asked; the message is one line."""


def shipped_file(folder: str, name: str) -> Path:
    """A file this package ships: from the checkout where there is one, else the wheel's copy."""
    checkout = _PACKAGE.parent / folder / name
    return checkout if checkout.is_file() else _PACKAGE / "data" / folder / name


def unit_text(config_path: Path, command: Path | None = None) -> str:
    """The shipped unit, its ExecStart pointing at `command` and `config_path` where those are plain."""
    text = shipped_file("systemd", UNIT_NAME).read_text()
    command = command or _installed_command()
    config = str(config_path.resolve())
    if command is not None and _PLAIN_PATH.fullmatch(str(command)) and _PLAIN_PATH.fullmatch(config):
        text = text.replace(f"ExecStart={_SHIPPED_COMMAND} run --config {_SHIPPED_CONFIG}",
                            f"ExecStart={command} run --config {config}")
    return text


def _installed_command() -> Path | None:
    # The `ufdl-node` script beside this interpreter: a venv's or pipx's bin/.
    script = Path(sys.executable).parent / "ufdl-node"
    return script if script.is_file() else None


def init(path: Path, systemd_path: Path | None = None, force: bool = False) -> list[Path]:
    """Write the commented settings to `path` (and the unit to `systemd_path`); returns what was written.

    Refuses, before writing anything, to replace an existing file unless `force`.
    """
    config_text = shipped_file("config", CONFIG_NAME).read_text()
    wanted = [(Path(path), config_text)]
    if systemd_path is not None:
        wanted.append((Path(systemd_path), unit_text(Path(path))))
    for target, _text in wanted:
        if target.is_dir():
            raise InitError(f"{target} is a directory; name the file to write")
        if target.exists() and not force:
            raise InitError(f"{target} exists; add --force to overwrite it")
    for target, text in wanted:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as e:
            raise InitError(f"cannot write {target}: {e.strerror or e}") from None
    return [target for target, _text in wanted]
