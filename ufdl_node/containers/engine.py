"""Jobs in containers, on the Docker Engine API (aiodocker), never the `docker` CLI.

One `ContainerEngine` per daemon wraps one `aiodocker.Docker()`:
- `probe()`: whether Docker answers, its version, whether GPUs can be handed to
  containers (the NVIDIA runtime, CDI) - the facts for hwinfo and check-config;
- `ensure_image()`: the pull policy, registry credentials (never logged, never in
  an error), pull progress through a callback, a typed error for each failure;
- `start(spec)` → `ContainerRun`: the job's output line by line, its exit code,
  stop (grace, then kill) and removal;
- `find(labels)`: a node's containers, found again by label after a restart -
  a container belongs to dockerd, not to the daemon, so it outlives the daemon
  and its output is resumed from where the job log ended (`LogCursor`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any, Literal

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from ..logs import get_logger, one_line, register_secret, scrub
from .spec import (
    LABEL_JOB,
    ContainerConfigError,
    ContainerError,
    ContainerSpec,
    LogCursor,
    LogLine,
    create_config,
    default_user,
    parse_frames,
    timestamp_ns,
)

log = get_logger("ufdl_node.containers.engine")

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
PullPolicy = Literal["if-missing", "always", "never"]
PULL_POLICIES: tuple[str, ...] = ("if-missing", "always", "never")
PROBE_TIMEOUT_S = 10.0

# Registries and dockerd word a refusal of credentials in several ways.
_AUTH_WORDS = ("unauthorized", "authentication required", "no basic auth credentials",
               "incorrect username or password", "denied: requested access")
_NOT_FOUND_WORDS = ("manifest unknown", "not found", "repository does not exist", "name unknown",
                    "no such image")


class EngineUnavailable(ContainerError):
    """Docker could not be reached (no socket, no permission, dockerd not running)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Docker not reachable at {url}: {reason}")
        self.url = url
        self.reason = reason


class ImageNotPresent(ContainerError):
    """The image is not on this node and the pull policy is "never"."""


class ImagePullError(ContainerError):
    """The image could not be pulled; `ref` says which."""

    def __init__(self, message: str, ref: str) -> None:
        super().__init__(message)
        self.ref = ref


class ImageNotFound(ImagePullError):
    """The registry has no such image (repository or tag)."""


class RegistryAuthError(ImagePullError):
    """The registry refused the credentials: hand the job back, do not fail it."""


class ContainerStartError(ContainerError):
    """The container could not be created or started."""


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for a registry; the password never appears in a repr, log or error."""

    username: str
    password: str = field(repr=False)
    server: str | None = None  # the registry's host[:port]; default: the image reference's


@dataclass(frozen=True)
class PullProgress:
    """How far a pull is: `fraction` of the bytes of the layers that report sizes
    (None before any does), and the latest status line."""

    fraction: float | None
    status: str


ProgressCallback = Callable[[PullProgress], "Awaitable[None] | None"]


@dataclass(frozen=True)
class EngineFacts:
    """What `ufdl-node hwinfo` and `check-config` say about Docker."""

    reachable: bool
    reason: str | None = None
    url: str = DEFAULT_DOCKER_URL
    server_version: str | None = None
    api_version: str | None = None
    runtimes: tuple[str, ...] = ()
    cdi_spec_dirs: tuple[str, ...] = ()

    @property
    def nvidia_runtime(self) -> bool:
        """Whether dockerd has the NVIDIA container runtime registered."""
        return "nvidia" in self.runtimes

    @property
    def gpus_supported(self) -> bool:
        """Whether a container can be given a GPU (NVIDIA runtime or CDI specs)."""
        return self.nvidia_runtime or bool(self.cdi_spec_dirs)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output (`hwinfo --json`)."""
        return {"reachable": self.reachable, "reason": self.reason, "url": self.url,
                "server_version": self.server_version, "api_version": self.api_version,
                "runtimes": list(self.runtimes), "nvidia_runtime": self.nvidia_runtime,
                "cdi_spec_dirs": list(self.cdi_spec_dirs), "gpus_supported": self.gpus_supported}

    def summary(self) -> str:
        """One line: 'Docker 24.0.7 (API 1.43), NVIDIA runtime: yes, CDI: no' or the reason."""
        if not self.reachable:
            return f"Docker not reachable at {self.url}: {self.reason}"
        yes_no = {True: "yes", False: "no"}
        return (f"Docker {self.server_version} (API {self.api_version}), "
                f"NVIDIA runtime: {yes_no[self.nvidia_runtime]}, CDI: {yes_no[bool(self.cdi_spec_dirs)]}")


def registry_host(ref: str) -> str | None:
    """The registry host of an image reference, or None for Docker Hub's short form."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


class _PullTracker:
    """Turns the pull's JSON progress stream into `PullProgress` updates."""

    def __init__(self) -> None:
        self._layers: dict[str, list[int]] = {}  # id → [current, total]
        self._last: tuple[float | None, str] | None = None

    def update(self, item: Mapping[str, Any]) -> PullProgress | None:
        status = str(item.get("status") or "")
        layer = str(item.get("id") or "")
        detail = item.get("progressDetail") or {}
        total = detail.get("total") if isinstance(detail, Mapping) else None
        if layer and status == "Downloading" and isinstance(total, int) and total > 0:
            self._layers[layer] = [min(int(detail.get("current") or 0), total), total]
        elif layer in self._layers and status in ("Download complete", "Verifying Checksum",
                                                   "Extracting", "Pull complete"):
            self._layers[layer][0] = self._layers[layer][1]
        fraction = None
        if self._layers:
            fraction = sum(c for c, _ in self._layers.values()) / sum(t for _, t in self._layers.values())
        line = f"{layer}: {status}" if layer and status else status
        # Downloading reports every few kilobytes: pass on a change of a percent or of status.
        key = (None if fraction is None else round(fraction, 2), status)
        if not line or key == self._last:
            return None
        self._last = key
        return PullProgress(fraction, line)


async def _report(callback: ProgressCallback | None, progress: PullProgress) -> None:
    if callback is None:
        return
    result = callback(progress)
    if inspect.isawaitable(result):
        await result


class ContainerEngine:
    """The daemon's one connection to dockerd (`url` default: $DOCKER_HOST or the local socket)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        self._docker: aiodocker.Docker | None = None
        # One pull of an image at a time: a second slot waiting for the same image
        # finds it present (if-missing) instead of pulling it again.
        self._pull_locks: dict[str, asyncio.Lock] = {}

    def _client(self) -> aiodocker.Docker:
        # Made on first use: its aiohttp session belongs to the running event loop.
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self.url)
            except (ValueError, AssertionError, OSError) as exc:
                raise self._unavailable(exc) from None
        return self._docker

    async def close(self) -> None:
        """Close the connection to dockerd (containers keep running)."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def __aenter__(self) -> ContainerEngine:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(self.url, one_line(exc) or type(exc).__name__)

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> EngineFacts:
        """Facts about dockerd; an unreachable Docker gives `reachable=False` and the reason."""
        try:
            docker = self._client()
            info, version = await asyncio.wait_for(
                asyncio.gather(docker.system.info(), docker.version()), timeout_s)
        except EngineUnavailable as exc:
            return EngineFacts(False, exc.reason, self.url)
        except asyncio.TimeoutError:
            return EngineFacts(False, f"no answer within {timeout_s:g} s", self.url)
        except (aiohttp.ClientError, OSError, aiodocker.DockerError) as exc:
            return EngineFacts(False, one_line(exc), self.url)
        return EngineFacts(
            reachable=True, url=self.url,
            server_version=str(info.get("ServerVersion") or version.get("Version") or "?"),
            api_version=str(version.get("ApiVersion") or "?"),
            runtimes=tuple(sorted(info.get("Runtimes") or {})),
            cdi_spec_dirs=tuple(info.get("CDISpecDirs") or ()))

    async def has_image(self, ref: str) -> bool:
        """Whether `ref` is on this node."""
        try:
            await self._client().images.inspect(ref)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise ContainerError(f"cannot look up image {ref}: {one_line(exc.message)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        return True

    async def ensure_image(self, ref: str, *, auth: RegistryAuth | None = None,
                           policy: str = "if-missing",
                           on_progress: ProgressCallback | None = None) -> None:
        """Make `ref` present on this node according to `policy`.

        "if-missing" pulls only an absent image, "always" pulls every time (a moved
        tag is followed), "never" only checks. Raises `ImageNotPresent`,
        `ImageNotFound`, `RegistryAuthError` (credentials refused: hand the job
        back) or `ImagePullError`.
        """
        if policy not in PULL_POLICIES:
            raise ContainerConfigError(f"pull policy {policy!r} is not one of {', '.join(PULL_POLICIES)}")
        async with self._pull_locks.setdefault(ref, asyncio.Lock()):
            if policy != "always" and await self.has_image(ref):
                return
            if policy == "never":
                raise ImageNotPresent(f"image {ref} is not on this node and the pull policy is 'never'")
            await self._pull(ref, auth, on_progress)

    async def _pull(self, ref: str, auth: RegistryAuth | None, on_progress: ProgressCallback | None) -> None:
        pull_ref, auth_config = ref, None
        if auth is not None:
            register_secret(auth.password, public=auth.username)
            if registry_host(ref) is None:
                pull_ref = f"docker.io/{ref}"  # aiodocker wants the registry in the reference
            auth_config = {"username": auth.username, "password": auth.password,
                           "serveraddress": auth.server or registry_host(pull_ref)}
        log.info("pulling image", image=ref, registry_user=auth.username if auth else None)
        tracker = _PullTracker()
        try:
            async for item in self._client().images.pull(pull_ref, auth=auth_config, stream=True):
                if item.get("error") or item.get("errorDetail"):
                    detail = item.get("errorDetail") or {}
                    raise _pull_error(ref, str(detail.get("message") or item.get("error")), auth)
                progress = tracker.update(item)
                if progress is not None:
                    await _report(on_progress, progress)
        except aiodocker.DockerError as exc:
            raise _pull_error(ref, exc.message, auth) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        await _report(on_progress, PullProgress(1.0, f"pulled {ref}"))
        log.info("image pulled", image=ref)

    async def start(self, spec: ContainerSpec) -> ContainerRun:
        """Create and start the container of `spec`; the image must be present."""
        config = create_config(spec)
        if os.getuid() == 0:
            _hand_over([spec.work_dir, spec.cache_dir], config["User"], tree=spec.work_dir)
        name = f"ufdl-job{spec.job_pk}-{token_hex(4)}"
        docker = self._client()
        try:
            container = await docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            raise ContainerStartError(
                f"cannot create the container of job {spec.job_pk} from {spec.image}: "
                f"{one_line(exc.message)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        run = ContainerRun(container, config["Labels"])
        try:
            await container.start()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            message = exc.message if isinstance(exc, aiodocker.DockerError) else str(exc)
            await run.remove()
            raise ContainerStartError(
                f"cannot start the container of job {spec.job_pk}: {one_line(message)}") from None
        log.info("container started", container=run.short_id, image=spec.image, job_pk=spec.job_pk,
                 slot=spec.slot, gpu=spec.gpu_uuid)
        return run

    async def find(self, labels: Mapping[str, str]) -> list[ContainerRun]:
        """The containers carrying all of `labels`, running or exited, oldest first."""
        filters = json.dumps({"label": [f"{key}={value}" for key, value in labels.items()]})
        try:
            found = await self._client().containers.list(all=True, filters=filters)
        except aiodocker.DockerError as exc:
            raise ContainerError(f"cannot list containers: {one_line(exc.message)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        found.sort(key=lambda c: c["Created"])
        return [ContainerRun(c, c["Labels"] or {}) for c in found]


def _pull_error(ref: str, message: str, auth: RegistryAuth | None) -> ImagePullError:
    """The typed error for a failed pull of `ref`, its message scrubbed of the credentials."""
    text = scrub(one_line(message))
    if auth is not None:
        text = text.replace(auth.password, "***")
    lowered = text.lower()
    if any(word in lowered for word in _AUTH_WORDS):
        if auth is not None:
            return RegistryAuthError(f"the registry refused the credentials of user {auth.username!r} "
                                     f"for image {ref}: {text}", ref)
        return ImagePullError(f"image {ref} needs registry credentials: {text}", ref)
    if any(word in lowered for word in _NOT_FOUND_WORDS):
        return ImageNotFound(f"image {ref} does not exist in its registry: {text}", ref)
    return ImagePullError(f"image {ref} cannot be pulled: {text}", ref)


def _hand_over(dirs: list[Path | None], user: str, *, tree: Path | None = None) -> None:
    """Make the mounted directories the container user's (the daemon runs as root), and
    every folder under `tree` (the work directory) too.

    Made here when missing: Docker would otherwise create them, owned by root.
    A container configured to run as root needs nothing.
    """
    uid_text, _, gid_text = user.partition(":")
    uid, gid = int(uid_text), int(gid_text or uid_text)
    if uid == 0:
        return
    # Folders the handler made before the start (a dataset moved into place, a config file's
    # folder) must take the container's files too. Files stay the daemon's: a dataset's may be
    # hard links to the node's shared cache, which the container must not be able to change.
    inner = [Path(top, name) for top, names, _ in os.walk(tree) for name in names] if tree else []
    for directory in [*dirs, *inner]:
        if directory is None or (directory in inner and directory.is_symlink()):
            continue
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            stat = os.stat(directory)
            if (stat.st_uid, stat.st_gid) != (uid, gid):
                os.chown(directory, uid, gid)
        except OSError as exc:
            raise ContainerStartError(f"cannot hand {directory} to the container user {user}: "
                                      f"{one_line(exc.strerror or exc)}") from None


class ContainerRun:
    """A started (or found again) container: its output, exit code, stop and removal."""

    def __init__(self, container: DockerContainer, labels: Mapping[str, str]) -> None:
        self._container = container
        self.labels: dict[str, str] = dict(labels)
        self.cursor: LogCursor | None = None  # after the last line `lines()` gave

    @property
    def id(self) -> str:
        """The container's full id."""
        return self._container.id

    @property
    def short_id(self) -> str:
        """The 12-character id `docker ps` shows."""
        return self._container.id[:12]

    @property
    def job_pk(self) -> int | None:
        """The job this container runs for, from its label."""
        value = self.labels.get(LABEL_JOB, "")
        return int(value) if value.isdigit() else None

    async def lines(self, after: LogCursor | None = None) -> AsyncGenerator[LogLine, None]:
        """stdout and stderr line by line as (timestamp, text), until the container exits.

        With `after`, the lines at or before that cursor are skipped: a daemon that
        re-attaches passes the cursor of the last line its job log holds.
        """
        params: dict[str, Any] = {"stdout": True, "stderr": True, "follow": True, "timestamps": True}
        if after is not None:
            params["since"] = after.since_param()
        self.cursor = after
        cursor_ns = timestamp_ns(after.timestamp) if after else None
        stream = self._container.log(**params)
        try:
            async with aclosing(parse_frames(stream, after)) as parsed:
                async for line in parsed:
                    line_ns = timestamp_ns(line.timestamp) if line.timestamp else None
                    if self.cursor is not None and line_ns == cursor_ns:
                        self.cursor = LogCursor(line.timestamp, self.cursor.seen + 1)
                    elif line_ns is not None:
                        self.cursor, cursor_ns = LogCursor(line.timestamp), line_ns
                    yield line
        except aiodocker.DockerError as exc:
            raise ContainerError(f"cannot read the output of container {self.short_id}: "
                                 f"{one_line(exc.message)}") from None
        finally:
            # Closed here, not by the garbage collector: a reader that stops early
            # (the daemon re-attaching later) leaves no open response behind.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def last_lines(self, n: int) -> list[str]:
        """The last `n` lines of the container's output (for a failure message)."""
        try:
            frames = await self._container.log(stdout=True, stderr=True, timestamps=True, tail=n)
        except aiodocker.DockerError as exc:
            raise ContainerError(f"cannot read the output of container {self.short_id}: "
                                 f"{one_line(exc.message)}") from None
        return [line.text async for line in parse_frames(frames)][-n:] if n > 0 else []

    async def wait(self) -> int:
        """Wait for the container to exit; its exit code."""
        try:
            result = await self._container.wait()
        except aiodocker.DockerError as exc:
            raise ContainerError(f"cannot wait for container {self.short_id}: "
                                 f"{one_line(exc.message)}") from None
        return int(result.get("StatusCode", -1))

    async def start_if_created(self) -> bool:
        """Start the container if it was created but never started (its creator died between
        the two calls); whether it was started now."""
        try:
            state = (await self._container.show()).get("State") or {}
            if state.get("Status") != "created":
                return False
            await self._container.start()
        except aiodocker.DockerError as exc:
            raise ContainerError(f"cannot start container {self.short_id}: "
                                 f"{one_line(exc.message)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ContainerError(f"cannot start container {self.short_id}: {one_line(exc)}") from None
        return True

    async def running(self) -> bool:
        """Whether the container is still running."""
        try:
            state = (await self._container.show()).get("State") or {}
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise ContainerError(f"cannot inspect container {self.short_id}: "
                                 f"{one_line(exc.message)}") from None
        return bool(state.get("Running"))

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s` seconds; a container already gone is fine."""
        try:
            await self._container.stop(t=max(0, math.ceil(grace_s)))
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return
            log.warning("container stop failed, killing it", container=self.short_id,
                        error=one_line(exc.message))
        if await self.running():
            try:
                await self._container.kill()
            except aiodocker.DockerError as exc:
                if exc.status not in (404, 409):  # 409: it exited meanwhile
                    raise ContainerError(f"cannot kill container {self.short_id}: "
                                         f"{one_line(exc.message)}") from None
        log.info("container stopped", container=self.short_id)

    async def remove(self) -> None:
        """Remove the container (killing it if it still runs); a container already gone is fine."""
        try:
            await self._container.delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise ContainerError(f"cannot remove container {self.short_id}: "
                                     f"{one_line(exc.message)}") from None
        log.info("container removed", container=self.short_id)


__all__ = [
    "PULL_POLICIES",
    "ContainerConfigError",
    "ContainerEngine",
    "ContainerError",
    "ContainerRun",
    "ContainerSpec",
    "ContainerStartError",
    "EngineFacts",
    "EngineUnavailable",
    "ImageNotFound",
    "ImageNotPresent",
    "ImagePullError",
    "LogCursor",
    "LogLine",
    "PullPolicy",
    "PullProgress",
    "RegistryAuth",
    "RegistryAuthError",
    "default_user",
]
