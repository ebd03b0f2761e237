"""An embedded server, in its own process, that dies by SIGKILL as a dataset file's bytes take their name.

``python -m tests.server.crash_server DATA_DIR before|after`` prints ``URL <the server's URL>``
on a line of its own (among its logs), then serves. An audit hook watches ``os.replace`` and
``os.rename`` into the data directory's ``datasets/`` folder: ``before`` kills the process before
the rename happens, ``after`` does the rename and then kills it. No code of the server is
replaced: the process really dies there, as a power cut or the OOM killer would make it, and a
restart shows what the data directory kept.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.server.conftest import server_settings
from ufdl_node.server import EmbeddedServer


def _install_hook(datasets: Path, when: str) -> None:
    renaming = False

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal renaming
        if event != "os.rename" or renaming:
            return
        src, dst = Path(os.fsdecode(args[0])), Path(os.fsdecode(args[1]))
        if dst.parent != datasets or not dst.name.isdigit():
            return
        if when == "after":
            renaming = True  # our own rename raises the event again
            os.replace(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


async def _serve(data_dir: Path) -> None:
    server = EmbeddedServer(server_settings(data_dir))
    await server.start()
    print("URL", server.url, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    data_dir, when = Path(sys.argv[1]).resolve(), sys.argv[2]
    if when not in ("before", "after"):
        raise SystemExit(f"crash_server: WHEN must be 'before' or 'after', not {when!r}")
    _install_hook(data_dir / "datasets", when)
    asyncio.run(_serve(data_dir))


if __name__ == "__main__":
    main()
