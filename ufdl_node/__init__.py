"""ufdl-node: the worker daemon for a UFDL job server, and an embedded job server."""

__version__ = "0.1.0"
