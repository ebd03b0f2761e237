"""The command line: the parser and the service commands (``main``), the user commands (``user``,
``usertools``), dry-run and the demo (``local``), a folder as a dataset (``localdata``,
``localfolders``, ``imagesize``), typed ``--param``/``--input`` (``args``), completion and the man
page (``extras``), ``init`` and terminal output (``terminal``)."""

from .main import main

__all__ = ["main"]
