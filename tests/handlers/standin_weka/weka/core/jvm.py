"""weka.core.jvm (stand-in): the JVM's start and stop; a call before start fails as pww3's does."""

from __future__ import annotations

started = False


def start(**_: object) -> None:
    global started
    started = True


def stop() -> None:
    global started
    started = False


def require() -> None:
    if not started:
        raise RuntimeError("JVM not running, call weka.core.jvm.start() first")
