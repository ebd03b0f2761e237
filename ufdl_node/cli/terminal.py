"""Output for a person: rich on a terminal, plain lines when piped or logged.

Without a terminal, rich's live displays draw nothing until they stop and then leave
their last frame without a newline, and a console 80 columns wide cuts long lines.
So every command prints through :func:`make_console`, and shows live views through
:func:`live_view`, which draws only on a terminal (the commands print one line per
change otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.live import Live

PIPED_WIDTH = 1000  # wide enough that a table or an error reason is never cut when piped


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): soft-wrapped, and never cropping when piped."""
    console = Console(soft_wrap=True, stderr=stderr)
    if console.is_terminal:
        return console
    return Console(soft_wrap=True, stderr=stderr, width=PIPED_WIDTH, highlight=False)


@contextlib.contextmanager
def live_view(console: Console, renderable: Any) -> Iterator[None]:
    """A rich Live display of `renderable` on a terminal; nothing when piped."""
    if not console.is_terminal:
        yield
        return
    with Live(renderable, console=console, refresh_per_second=8):
        yield


class CommandFailed(Exception):
    """A command could not do what it was asked: one line for stderr and an exit code.

    ``main`` prints ``ufdl-node: <command>: <message>`` and exits with ``code``; no
    traceback, and the message must never carry a secret.
    """

    def __init__(self, message: str, code: int) -> None:
        self.message = message
        self.code = code
        super().__init__(message)
