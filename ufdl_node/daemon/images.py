"""What a container job's Docker-image record says, for the daemon: the image to pull and the
registry credentials it comes with (:func:`image_choice`), whether a slot's GPU and driver are
enough for it (:func:`image_fit`), which parameter names it (:func:`image_parameter`), and the
gate's cache of records read for gating (:class:`Gate`), so that a slot that cannot run an image
does not acquire its job. Used by :mod:`.containers` and :mod:`.health`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..client import UfdlClient
from ..containers.engine import (
    RegistryAuth,
)
from ..errors import JobFailed, ServerError
from ..hardware import GpuInfo
from ..logs import get_logger, one_line, register_secret
from ..protocol import JobView
from ..work.records import docker_image
from ..work.server_access import ServerAccess

log = get_logger("ufdl_node.containers.engine")

GATE_CACHE_S = 600.0  # a Docker-image record is read again after this long
GATE_CACHE_MAX = 256


@dataclass(frozen=True)
class ImageChoice:
    """What to run: the reference, the registry credentials, whether it may use a GPU."""

    ref: str
    auth: RegistryAuth | None = None
    cpu_only: bool = False
    record_name: str | None = None  # None: a plain reference, not a record


def image_choice(image: str | Mapping[str, Any]) -> ImageChoice:
    """A plain reference, or a Docker-image record (``url``, ``registry_*``, ``cpu``)."""
    if isinstance(image, str):
        if not image.strip():
            raise JobFailed("container: the image reference is empty")
        return ImageChoice(image.strip())
    if not isinstance(image, Mapping) or not isinstance(image.get("url"), str) or not image["url"].strip():
        raise JobFailed(f"container: {one_line(repr(image), 80)} is neither an image reference "
                        "nor a docker image record with a url")
    auth = None
    user, password = image.get("registry_username"), image.get("registry_password")
    if isinstance(user, str) and user and isinstance(password, str) and password:
        register_secret(password, public=user)
        server = image.get("registry_url") if isinstance(image.get("registry_url"), str) else None
        auth = RegistryAuth(user, password, _registry_server(server))
    name = f"{image.get('name')} v{image.get('version')}" if image.get("name") else image["url"].strip()
    return ImageChoice(image["url"].strip(), auth, bool(image.get("cpu")), name)


def _registry_server(url: str | None) -> str | None:
    """The host[:port] of a registry URL as the record gives it (with or without scheme)."""
    if not url:
        return None
    text = url.split("://", 1)[-1]
    return text.split("/", 1)[0] or None


def _version(text: Any) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", str(text or ""))
    return tuple(int(p) for p in parts) if parts else None


def image_fit(record: Mapping[str, Any], gpu: GpuInfo | None,
              driver_version: str | None = None) -> str | None:
    """None when a slot with `gpu` can run the image of `record`, else why not (one line)."""
    if record.get("cpu") is True:
        return None
    name = f"docker image {record.get('name') or record.get('url') or record.get('pk')}"
    if gpu is None:
        return f"{name} needs a GPU (its record is not marked cpu); this slot has none"
    raw_cuda = record.get("cuda_version")
    cuda: Mapping[str, Any] = raw_cuda if isinstance(raw_cuda, Mapping) else {}
    driver = gpu.driver_version or driver_version
    wanted, have = _version(cuda.get("min_driver_version")), _version(driver)
    if wanted is not None and have is not None and have < wanted:
        return (f"{name} needs NVIDIA driver >= {cuda.get('min_driver_version')} "
                f"(CUDA {cuda.get('version')}); GPU {gpu.index} has {driver}")
    generation = record.get("min_hardware_generation")
    if isinstance(generation, Mapping):
        try:
            low = float(generation.get("min_compute_capability") or 0)
        except (TypeError, ValueError):
            low = 0.0
        if gpu.compute_capability < low:
            return (f"{name} needs hardware generation {generation.get('generation')} (compute capability "
                    f">= {low:g}); GPU {gpu.index} has {gpu.compute_capability:g}")
    return None


def image_parameter(job: JobView) -> tuple[str, Any, str] | None:
    """(name, value, type) of the job's Docker-image parameter, if it has one."""
    values = job.raw.get("parameter_values")
    if not isinstance(values, Mapping):
        return None
    for name, entry in values.items():
        if isinstance(entry, Mapping) and "DockerImage" in str(entry.get("type") or ""):
            return str(name), entry.get("value"), str(entry.get("type"))
    return None


RecordFetcher = Callable[[Any, str], Awaitable[dict[str, Any]]]
GATE_RETRY_S = 30.0  # reading a record for gating: a short budget, the next poll asks again


def record_fetcher(client: UfdlClient) -> RecordFetcher:
    """Reads the Docker-image record a job parameter names, through the daemon's client."""
    access = ServerAccess(client.node_io(action="docker record"), retry_s=GATE_RETRY_S)

    async def fetch(value: Any, type_: str) -> dict[str, Any]:
        return await docker_image(access, value, type_)

    return fetch


@dataclass
class Gate:
    """Docker-image records by parameter value, read in the background (the poll is synchronous)."""

    fetch: RecordFetcher
    records: dict[str, tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    pending: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    said: set[tuple[int, int, str]] = field(default_factory=set)

    def record(self, value: Any, type_: str) -> tuple[bool, dict[str, Any] | None]:
        """(known, record); a record not known yet is read in the background."""
        key = json.dumps([value, type_], sort_keys=True, default=str)
        cached = self.records.get(key)
        if cached is not None and time.monotonic() - cached[0] < GATE_CACHE_S:
            return True, cached[1]
        if key not in self.pending:
            self.pending[key] = asyncio.create_task(self._load(key, value, type_), name="docker-record")
        return False, None

    async def _load(self, key: str, value: Any, type_: str) -> None:
        try:
            record: dict[str, Any] | None = await self.fetch(value, type_)
        except (JobFailed, ServerError, ValueError, TypeError, KeyError) as e:
            # Not gated then: the handler reads it again and fails the job with the reason.
            log.info("docker image record not readable for gating", value=one_line(value, 80),
                     error=one_line(e))
            record = None
        if len(self.records) >= GATE_CACHE_MAX:
            self.records.pop(next(iter(self.records)))
        self.records[key] = (time.monotonic(), record)
        self.pending.pop(key, None)

    async def close(self) -> None:
        for task in self.pending.values():
            task.cancel()
        await asyncio.gather(*self.pending.values(), return_exceptions=True)
        self.pending.clear()
