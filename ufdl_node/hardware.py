"""What this machine has: memory, GPUs, the NVIDIA driver, its address, free disk.

GPU facts come from NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``),
loaded lazily. No library, no driver or any NVML fault gives a clean CPU-only
result whose ``note`` says why: detection never raises. It blocks (NVML start-up
can take a second), so call it from a thread in async code:
``await asyncio.to_thread(detect_hardware)``.

The rest are pure helpers for registration: which slots to run
(:func:`slot_indices`), the hardware generation of a GPU (:func:`generation_for`)
and the fields a node is registered with (:func:`node_fields`).

GPU indices are NVML's, which follow the PCI bus order. CUDA numbers devices
fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set, so a job for slot
N should see its GPU through ``CUDA_VISIBLE_DEVICES=<uuid>`` (or with that order
set), not through a bare index.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .errors import ConfigError
from .logs import get_logger, one_line

log = get_logger(__name__)

# TEST-NET-1 (RFC 5737): documentation only, never a real host. Connecting a UDP
# socket to it only asks the kernel for a route; no packet leaves the machine.
_PROBE_ADDRESS = ("192.0.2.1", 9)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML sees it."""

    index: int
    name: str
    mem_bytes: int
    compute_capability: float  # e.g. 8.6
    uuid: str | None = None
    driver_version: str | None = None


@dataclass(frozen=True)
class HardwareInfo:
    """The machine: CPU memory, GPUs (empty on a CPU-only machine) and the driver.

    ``note`` is one line saying why no GPU facts were found (or which GPU was
    skipped), None when NVML answered everything.
    """

    cpu_mem_bytes: int
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports, e.g. "12.2"
    cpu_count: int | None = None
    note: str | None = None

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    def gpu(self, index: int) -> GpuInfo | None:
        """The GPU with NVML index `index`, or None."""
        return next((g for g in self.gpus if g.index == index), None)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output (`hwinfo --json`, the status endpoint)."""
        return dataclasses.asdict(self)


# -- detection -------------------------------------------------------------------


def detect_hardware() -> HardwareInfo:
    """CPU memory from psutil and GPUs from NVML; CPU-only (with a note) when NVML fails."""
    cpu_mem = int(psutil.virtual_memory().total)
    cpu_count = psutil.cpu_count(logical=True)
    try:
        import pynvml
    except ImportError:
        return HardwareInfo(cpu_mem, cpu_count=cpu_count,
                            note="nvidia-ml-py is not installed: CPU only")
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError, or an OSError from a broken library
        return HardwareInfo(cpu_mem, cpu_count=cpu_count,
                            note=f"NVML unavailable ({_describe(e)}): CPU only")
    try:
        return _query_nvml(pynvml, cpu_mem, cpu_count)
    except Exception as e:
        return HardwareInfo(cpu_mem, cpu_count=cpu_count,
                            note=f"NVML query failed ({_describe(e)}): CPU only")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as e:
            log.debug("nvml_shutdown_failed", error=_describe(e))


def _query_nvml(nvml: Any, cpu_mem: int, cpu_count: int | None) -> HardwareInfo:
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    cuda: str | None = None
    try:
        version = int(nvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12020
        cuda = f"{version // 1000}.{version % 1000 // 10}"
    except Exception:
        pass  # old drivers lack the call; the CUDA version is only informative
    gpus: list[GpuInfo] = []
    skipped: list[str] = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        try:
            gpus.append(_query_gpu(nvml, index, driver))
        except Exception as e:  # one broken GPU (fallen off the bus) must not hide the others
            skipped.append(f"GPU {index} skipped ({_describe(e)})")
    note = "; ".join(skipped) or None
    if not gpus and note is None:
        note = "NVML found no GPU: CPU only"
    return HardwareInfo(cpu_mem, gpus, driver_version=driver, cuda_version=cuda,
                        cpu_count=cpu_count, note=note)


def _query_gpu(nvml: Any, index: int, driver: str | None) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    try:
        uuid: str | None = _text(nvml.nvmlDeviceGetUUID(handle))
    except Exception:
        uuid = None
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)) or f"GPU {index}",
        mem_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        # through text, so that 8.6 is the same float as the server's "8.6"
        compute_capability=float(f"{int(major)}.{int(minor)}"),
        uuid=uuid,
        driver_version=driver,
    )


def _text(value: Any) -> str | None:
    # nvidia-ml-py returns str; older pynvml builds returned bytes.
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(error: BaseException) -> str:
    return one_line(str(error) or type(error).__name__, 200)


# -- registration ----------------------------------------------------------------


def generation_for(compute_capability: float | None,
                   rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The pk of the hardware row whose [min, max) holds `compute_capability`, or None.

    Rows are the server's hardware list. Bounds may come as numbers or as decimal
    strings; a missing max means no upper bound; malformed rows are skipped.
    """
    if compute_capability is None:
        return None
    for row in rows:
        try:
            low = float(row["min_compute_capability"])
            high_raw = row.get("max_compute_capability")
            high = float("inf") if high_raw is None else float(high_raw)
            pk = int(row["pk"])
        except (KeyError, TypeError, ValueError):
            continue
        if low <= compute_capability < high:
            return pk
    return None


def slot_indices(info: HardwareInfo, configured: Sequence[int] | None) -> list[int]:
    """The GPU index of each slot: `configured` (checked), else every GPU, else [0].

    On a GPU machine each must name a GPU that was found. On a CPU-only machine the
    indices count CPU slots from 0 ([0, 1] is two slots): an index beyond them names a
    GPU the machine lacks (gpu_indices = [7] would register a node 7 that is not there).
    """
    if configured is None:
        return [g.index for g in info.gpus] or [0]
    indices = list(configured)
    problems: list[str] = []
    if not indices:
        problems.append("gpu_indices: empty; leave it out to run one slot per GPU")
    seen: set[int] = set()
    for index in indices:
        if index < 0:
            problems.append(f"gpu_indices: {index} is negative")
        elif index in seen:
            problems.append(f"gpu_indices: {index} is listed twice")
        elif info.gpus and info.gpu(index) is None:
            found = ", ".join(str(g.index) for g in info.gpus)
            problems.append(f"gpu_indices: no GPU with index {index} on this machine (found: {found})")
        elif not info.gpus and index >= len(indices):
            problems.append(f"gpu_indices: no GPU with index {index} on this machine (none found; "
                            f"without GPUs the indices count CPU slots from 0, e.g. [0] or [0, 1])")
        seen.add(index)
    if problems:
        raise ConfigError(problems)
    return indices


def unmet_gpu_needs(needs: Any, gpu: GpuInfo | None) -> str | None:
    """Why a slot with `gpu` (None: a CPU slot) cannot meet a handler's `needs` (an ``api.Needs``)
    on the GPU side, or None when it can. The slot's gate and dry-run's check share it."""
    if needs.gpu and gpu is None:
        return "needs a GPU"
    if gpu is not None:
        if needs.min_gpu_mem_bytes and gpu.mem_bytes < needs.min_gpu_mem_bytes:
            return f"needs {needs.min_gpu_mem_bytes} bytes of GPU memory"
        cc = gpu.compute_capability
        if needs.min_compute_capability is not None and (cc is None or cc < needs.min_compute_capability):
            return f"needs compute capability {needs.min_compute_capability}"
    elif needs.min_gpu_mem_bytes or needs.min_compute_capability is not None:
        return "needs a GPU"
    return None


def node_fields(info: HardwareInfo, index: int,
                hardware_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The hardware fields of the node for slot `index` (to create or PATCH it)."""
    gpu = info.gpu(index)
    return {
        "cpu_mem": info.cpu_mem_bytes,
        "gpu_mem": gpu.mem_bytes if gpu else None,
        "driver_version": (gpu.driver_version or info.driver_version) if gpu else None,
        "hardware_generation": generation_for(gpu.compute_capability, hardware_rows) if gpu else None,
    }


# -- the machine around us ---------------------------------------------------------


def free_disk_bytes(path: str | Path) -> int:
    """Bytes free to this user on the file system of `path` (or of its nearest existing parent)."""
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    return int(shutil.disk_usage(target).free)


def node_ip(probe: tuple[str, int] = _PROBE_ADDRESS) -> str:
    """This machine's primary IPv4 address (the one its default route leaves from).

    Connecting a UDP socket only picks a route and a source address: nothing is
    sent. Falls back to what the host name resolves to, then to 127.0.0.1.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(probe)
            address = str(s.getsockname()[0])
        if _usable(address):
            return address
    except OSError as e:  # no route (an offline machine)
        log.debug("node_ip_probe_failed", error=_describe(e))
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for *_, sockaddr in infos:
        if _usable(str(sockaddr[0])):
            return str(sockaddr[0])
    return "127.0.0.1"


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


# -- display ----------------------------------------------------------------------


def format_hwinfo(info: HardwareInfo,
                  hardware_rows: Sequence[Mapping[str, Any]] | None = None) -> str:
    """What `ufdl-node hwinfo` prints; with the server's hardware rows, each GPU's generation."""
    cpus = f", {info.cpu_count} CPUs" if info.cpu_count else ""
    lines = [f"CPU memory: {_gib(info.cpu_mem_bytes)}{cpus}"]
    if info.driver_version:
        cuda = f" (CUDA {info.cuda_version})" if info.cuda_version else ""
        lines.append(f"NVIDIA driver: {info.driver_version}{cuda}")
    for gpu in info.gpus:
        parts = [f"GPU {gpu.index}: {gpu.name}", _gib(gpu.mem_bytes),
                 f"compute capability {gpu.compute_capability:.1f}"]
        if hardware_rows is not None:
            pk = generation_for(gpu.compute_capability, hardware_rows)
            name = next((str(r.get("generation")) for r in hardware_rows
                         if str(r.get("pk")) == str(pk)), None)
            parts.append(f"generation {name} (pk {pk})" if pk is not None else "generation unknown")
        if gpu.uuid:
            parts.append(gpu.uuid)
        lines.append(", ".join(parts))
    if info.cpu_only:
        lines.append("GPUs: none")
    if info.note:
        lines.append(f"Note: {info.note}")
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
