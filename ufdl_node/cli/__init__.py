"""The command line: the parser and the service commands (``main``), the options and settings the
commands share (``options``), the user commands (``user``, ``usertools``), dry-run and the demo
(``local``), a folder as a dataset (``localdata``, ``localfolders``, ``imagesize``), typed
``--param``/``--input`` (``args``), completion and the man page (``extras``), ``init``, terminal
output: listings and error lines (``terminal``), and a job's phase and live progress (``progress``)."""

from .main import main

__all__ = ["main"]
