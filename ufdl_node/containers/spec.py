"""What a job's container is: its spec, the Docker Engine create config, its log lines.

Pure values and functions, no I/O: `ContainerSpec` says what to run and how
(image, command, mounts, user, GPU, labels), `create_config` turns it into the
exact JSON body of the Engine API's `POST /containers/create`, and `parse_frames`
turns the timestamped log frames of `GET /containers/{id}/logs` into lines.
`engine.py` does the talking to Docker.

The container's user: a job never runs as root unless configured to. When the
daemon runs as an ordinary user, its own uid:gid (files it then finds in the
work directory are its own); when the daemon runs as root, `nobody`
(65534:65534), and the engine hands the work and cache directories to that
user before the start.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import UfdlNodeError

LABEL_PREFIX = "org.ufdl.node."
LABEL_NODE = LABEL_PREFIX + "node"
LABEL_SLOT = LABEL_PREFIX + "slot"
LABEL_JOB = LABEL_PREFIX + "job"

WORKSPACE = "/workspace"
CACHE = "/.cache"
ROOT_DAEMON_USER = "65534:65534"  # nobody:nogroup, for a daemon that runs as root
# The daemon streams the job log from Docker's log, so the driver must be one that
# the logs API reads; bounded so that a chatty job cannot fill the disk.
LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "64m", "max-file": "4"}}

_USER_RE = re.compile(r"\d+(:\d+)?")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TS_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


class ContainerError(UfdlNodeError):
    """Root of the container layer's errors; the message is one readable line."""


class ContainerConfigError(ContainerError, ValueError):
    """A container spec or a pull policy that cannot be used."""


def default_user() -> str:
    """The container's uid:gid when none is configured: the daemon's own, never root."""
    uid = os.getuid()
    return ROOT_DAEMON_USER if uid == 0 else f"{uid}:{os.getgid()}"


def job_labels(node: str, slot: str | None = None, job_pk: int | None = None) -> dict[str, str]:
    """The label filter for a node's containers, optionally narrowed to a slot and a job."""
    labels = {LABEL_NODE: node}
    if slot is not None:
        labels[LABEL_SLOT] = slot
    if job_pk is not None:
        labels[LABEL_JOB] = str(job_pk)
    return labels


@dataclass(frozen=True)
class ContainerSpec:
    """One job's container: what runs, with which mounts, as whom, on which GPU.

    `command` is an argument list, or a string run by `/bin/sh -c`. `work_dir` is
    mounted at /workspace (and is the working directory), `cache_dir` at /.cache;
    `binds` are extra Docker binds ("/host/path:/container/path[:ro]"). `user` is
    "uid[:gid]" (default: `default_user()`). `gpu_uuid` requests exactly that GPU
    (none: a CPU container). `labels` are added to the node/slot/job labels.
    """

    image: str
    command: Sequence[str] | str
    node: str
    slot: str
    job_pk: int
    work_dir: Path | None = None
    cache_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[str] = ()
    user: str | None = None
    shm_size_bytes: int | None = None
    network_mode: str | None = None
    gpu_uuid: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _spec_problem(self)
        if problem:
            raise ContainerConfigError(f"container spec for job {self.job_pk}: {problem}")


def _spec_problem(spec: ContainerSpec) -> str | None:
    """The first thing wrong with `spec`, or None."""
    if not spec.image or spec.image != spec.image.strip():
        return f"image reference {spec.image!r} is empty or has spaces"
    if (isinstance(spec.command, str) and not spec.command.strip()) or not spec.command:
        return "the command is empty"
    for name, path in (("work_dir", spec.work_dir), ("cache_dir", spec.cache_dir)):
        if path is not None and not Path(path).is_absolute():
            return f"{name} {str(path)!r} is not an absolute path"
    for bind in spec.binds:
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]) \
                or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            return f"bind {bind!r} is not /host/path:/container/path[:ro|rw]"
    bad_env = [k for k in spec.env if not _ENV_KEY_RE.fullmatch(k)]
    if bad_env:
        return f"environment name {bad_env[0]!r} is not a valid variable name"
    if spec.user is not None and not _USER_RE.fullmatch(spec.user):
        return f"user {spec.user!r} is not uid or uid:gid"
    if spec.shm_size_bytes is not None and spec.shm_size_bytes <= 0:
        return f"shm_size_bytes {spec.shm_size_bytes} is not positive"
    bad_labels = [k for k in spec.labels if not _LABEL_KEY_RE.fullmatch(k)]
    if bad_labels:
        return f"label {bad_labels[0]!r} is not a lower-case dotted name"
    return None


def create_config(spec: ContainerSpec) -> dict[str, Any]:
    """The body of `POST /containers/create` for `spec` (Docker Engine API)."""
    command = ["/bin/sh", "-c", spec.command] if isinstance(spec.command, str) else list(spec.command)
    binds = []
    if spec.work_dir is not None:
        binds.append(f"{spec.work_dir}:{WORKSPACE}")
    if spec.cache_dir is not None:
        binds.append(f"{spec.cache_dir}:{CACHE}")
    binds.extend(spec.binds)
    # Init: a small init as PID 1 passes the stop signal on to the job's process;
    # a shell as PID 1 ignores SIGTERM and every stop would wait out the grace period.
    host_config: dict[str, Any] = {"Binds": binds, "Init": True, "LogConfig": LOG_CONFIG}
    if spec.shm_size_bytes is not None:
        host_config["ShmSize"] = spec.shm_size_bytes
    if spec.network_mode is not None:
        host_config["NetworkMode"] = spec.network_mode
    if spec.gpu_uuid is not None:
        host_config["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": [spec.gpu_uuid], "Capabilities": [["gpu"]]}]
    labels = {**spec.labels, **job_labels(spec.node, spec.slot, spec.job_pk)}
    config: dict[str, Any] = {
        "Image": spec.image,
        "Cmd": command,
        "Env": [f"{key}={value}" for key, value in sorted(spec.env.items())],
        "User": spec.user if spec.user is not None else default_user(),
        "Labels": labels,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host_config,
    }
    if spec.work_dir is not None:
        config["WorkingDir"] = WORKSPACE
    return config


class LogLine(NamedTuple):
    """One line of a container's output, with Docker's RFC 3339 timestamp."""

    timestamp: str
    text: str


@dataclass(frozen=True)
class LogCursor:
    """Where a reader of a container's log stands: after the line at `timestamp`.

    `seen` counts the lines already read that carry exactly that timestamp, so that
    resuming skips those and no others (two lines may share a nanosecond).
    """

    timestamp: str
    seen: int = 1

    @classmethod
    def after(cls, lines: Sequence[LogLine]) -> LogCursor | None:
        """The cursor just past the last of `lines` (None for no lines)."""
        if not lines:
            return None
        last = lines[-1].timestamp
        last_ns = timestamp_ns(last)
        seen = 0
        for line in reversed(lines):
            if timestamp_ns(line.timestamp) != last_ns:
                break
            seen += 1
        return cls(last, seen)

    def since_param(self) -> str:
        """The logs API's `since` for this cursor: Unix seconds with nanoseconds."""
        ns = timestamp_ns(self.timestamp)
        return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def timestamp_ns(timestamp: str) -> int:
    """Nanoseconds since the epoch of a Docker log timestamp (RFC 3339, ns precision)."""
    match = _TS_RE.fullmatch(timestamp)
    if match is None:
        raise ValueError(f"not a Docker log timestamp: {timestamp!r}")
    seconds = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    fraction = int((match.group(2) or "0").ljust(9, "0"))
    zone = match.group(3)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + fraction


def _split_timestamp(frame: str) -> tuple[str | None, str]:
    head, sep, rest = frame.partition(" ")
    if sep and _TS_RE.fullmatch(head):
        return head, rest
    return None, frame


async def parse_frames(frames: AsyncIterable[str] | Iterable[str],
                       after: LogCursor | None = None) -> AsyncGenerator[LogLine, None]:
    """Lines from timestamped log frames, skipping those at or before `after`.

    Docker writes one frame per message, "<timestamp> <text>"; a message longer
    than its buffer arrives as several frames without the newline, each with its
    own timestamp: those are joined under the first one's.
    """
    after_ns = timestamp_ns(after.timestamp) if after else None
    to_skip = after.seen if after else 0
    pending = ""
    pending_ts: str | None = None

    def keep(line: LogLine) -> bool:
        nonlocal to_skip
        if after_ns is None or not line.timestamp:
            return True
        ns = timestamp_ns(line.timestamp)
        if ns < after_ns:
            return False
        if ns == after_ns and to_skip > 0:
            to_skip -= 1
            return False
        return True

    async with aclosing(_aiter(frames)) as frame_stream:
        async for frame in frame_stream:
            stamp, text = _split_timestamp(frame)
            if pending_ts is None:
                pending_ts = stamp
            pending += text
            while "\n" in pending:
                text, pending = pending.split("\n", 1)
                line = LogLine(pending_ts or stamp or "", text.rstrip("\r"))
                if keep(line):
                    yield line
                pending_ts = stamp if pending else None
    if pending and pending_ts and keep(line := LogLine(pending_ts, pending.rstrip("\r"))):
        yield line


async def _aiter(items: AsyncIterable[str] | Iterable[str]) -> AsyncGenerator[str, None]:
    if isinstance(items, Iterable):
        for item in items:
            yield item
    else:
        async for item in items:
            yield item
