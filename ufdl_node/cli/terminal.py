"""Output for a person: rich on a terminal, plain lines when piped or logged.

Without a terminal, rich's live displays draw nothing until they stop and then leave
their last frame without a newline, and a console 80 columns wide cuts long lines.
So every command prints through :func:`make_console`, and shows live views through
:func:`live_view`, which draws only on a terminal (the commands print one line per
change otherwise). Listings print through :func:`print_rows`: a table on a terminal,
tab-separated plain lines to a pipe or a file, one JSON document with ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

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


def error_line(label: str, message: str) -> None:
    """One line on stderr, ``ufdl-node: LABEL: message``: every error, warning and skipped plugin of
    every command prints this way (LABEL: the command, ``config``, ``warning``, ``plugin skipped``,
    ``check-config: warning`` ...), never with markup, never cut."""
    print(f"ufdl-node: {label}: {message}", file=sys.stderr)


def note(message: str) -> None:
    """Words beside a command's output (what was created, where to look next): a plain line on
    stderr, so that stdout holds only the output (``JOB=$(ufdl-node submit ...)``)."""
    print(message, file=sys.stderr)


class CommandFailed(Exception):
    """A command could not do what it was asked: one line for stderr and an exit code.

    ``main`` prints ``ufdl-node: <command>: <message>`` and exits with ``code``; no
    traceback, and the message must never carry a secret.
    """

    def __init__(self, message: str, code: int) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


def _cell(value: Any) -> str:
    """A value as one table cell: None empty, never a tab or a line break."""
    if value is None:
        return ""
    return " ".join(str(value).split("\t")).replace("\r", " ").replace("\n", " ")


def print_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool = False,
               records: Any = None, title: str | None = None, empty: str = "") -> None:
    """A listing on stdout, the one way every listing command prints (`jobs`, `templates list`,
    `nodes` ...): `--json` prints `records` (default: `rows`) as one JSON document; on a terminal a
    table of `columns`; to a pipe or a file plain lines: a header of the column names, then one
    line per row, tab-separated (``cut -f``, ``awk -F'\\t'``). `empty` is said instead of a table
    when there are no rows (not in JSON, which prints ``[]``)."""
    if as_json:
        print(json.dumps(list(rows) if records is None else records, indent=2, default=str))
        return
    console = make_console()
    if not rows:
        if empty:
            console.print(empty, markup=False)
        return
    if not console.is_terminal:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(_cell(row.get(column)) for column in columns))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(_cell(row.get(column))) for column in columns))
    console.print(table)
