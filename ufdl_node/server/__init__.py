"""The embedded UFDL job server: a persistent, single-machine server speaking UFDL-API.md.

``create_app(settings)`` is the aiohttp application; ``EmbeddedServer`` starts
and stops it in-process (tests, dry-run); ``serve(settings)`` is the
``ufdl-node server`` command.
"""

from .app import create_app
from .runner import EmbeddedServer, serve

__all__ = ["EmbeddedServer", "create_app", "serve"]
