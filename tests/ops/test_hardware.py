"""Hardware detection, slot selection and node registration fields."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from ufdl_node.errors import ConfigError
from ufdl_node.hardware import (
    GpuInfo,
    HardwareInfo,
    detect_hardware,
    format_hwinfo,
    free_disk_bytes,
    generation_for,
    node_fields,
    node_ip,
    slot_indices,
)

from .conftest import FakeGpu, FakeNvmlState

# The real server's hardware list (UFDL-API.md section 2), bounds as Django sends decimals.
HARDWARE_ROWS: list[dict[str, Any]] = [
    {"pk": 1, "generation": "Fermi", "min_compute_capability": "2.0", "max_compute_capability": "3.0"},
    {"pk": 2, "generation": "Kepler", "min_compute_capability": "3.0", "max_compute_capability": "5.0"},
    {"pk": 3, "generation": "Maxwell", "min_compute_capability": "5.0", "max_compute_capability": "6.0"},
    {"pk": 4, "generation": "Pascal", "min_compute_capability": "6.0", "max_compute_capability": "7.0"},
    {"pk": 5, "generation": "Volta", "min_compute_capability": "7.0", "max_compute_capability": "7.5"},
    {"pk": 6, "generation": "Turing", "min_compute_capability": "7.5", "max_compute_capability": "8.0"},
    {"pk": 7, "generation": "Ampere", "min_compute_capability": "8.0", "max_compute_capability": "8.9"},
    {"pk": 8, "generation": "Ada", "min_compute_capability": "8.9", "max_compute_capability": "9.0"},
    {"pk": 9, "generation": "Hopper", "min_compute_capability": "9.0", "max_compute_capability": "10.0"},
]

FakeNvml = Callable[..., FakeNvmlState]


def _two_gpu_info() -> HardwareInfo:
    return HardwareInfo(
        cpu_mem_bytes=64 * 2**30, driver_version="535.104.05", cuda_version="12.2",
        gpus=[GpuInfo(0, "NVIDIA A100", 40 * 2**30, 8.0, "GPU-a", "535.104.05"),
              GpuInfo(1, "NVIDIA H100", 80 * 2**30, 9.0, "GPU-b", "535.104.05")])


# -- detection ---------------------------------------------------------------------


def test_this_machine_is_detected_as_cpu_only_with_a_note() -> None:
    """Without an NVIDIA driver (this machine), detection gives CPU memory, no GPU and a reason."""
    info = detect_hardware()
    assert info.cpu_mem_bytes == psutil.virtual_memory().total
    assert info.gpus == [] and info.cpu_only
    assert info.note and "\n" not in info.note


def test_missing_nvml_package_gives_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nvidia-ml-py installed, detection says so instead of raising."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    info = detect_hardware()
    assert info.cpu_only and info.note == "nvidia-ml-py is not installed: CPU only"


def test_nvml_init_error_gives_cpu_only(fake_nvml: FakeNvml) -> None:
    """An NVMLError from nvmlInit (no driver loaded) gives a CPU-only result naming the error."""
    fake_nvml(FakeGpu(), init_error=True)
    info = detect_hardware()
    assert info.cpu_only and info.driver_version is None
    assert info.note == "NVML unavailable (Driver Not Loaded): CPU only"


def test_nvml_gpus_are_reported(fake_nvml: FakeNvml) -> None:
    """Each GPU's index, name, UUID, memory and compute capability come from NVML."""
    state = fake_nvml(FakeGpu(), FakeGpu(name="NVIDIA H100 80GB HBM3", mem_bytes=80 * 2**30,
                                         capability=(9, 0), uuid="GPU-h100"))
    info = detect_hardware()
    assert info.gpus == [
        GpuInfo(0, "NVIDIA RTX A6000", 48 * 2**30, 8.6, "GPU-00000000-0000-0000-0000-000000000000",
                "535.104.05"),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", 80 * 2**30, 9.0, "GPU-h100", "535.104.05")]
    assert (info.driver_version, info.cuda_version, info.note) == ("535.104.05", "12.2", None)
    assert state.shutdown_calls == state.init_calls == 1


def test_nvml_bytes_strings_are_decoded(fake_nvml: FakeNvml) -> None:
    """Old pynvml builds return bytes; the driver version is still text."""
    fake_nvml(FakeGpu(), driver=b"470.82.01")
    assert detect_hardware().driver_version == "470.82.01"


def test_a_broken_gpu_is_skipped_and_noted(fake_nvml: FakeNvml) -> None:
    """One GPU that NVML cannot query does not hide the others."""
    fake_nvml(FakeGpu(broken=True), FakeGpu(uuid="GPU-ok"))
    info = detect_hardware()
    assert [g.index for g in info.gpus] == [1]
    assert info.note == "GPU 0 skipped (GPU is lost)"


def test_nvml_without_gpus_is_cpu_only(fake_nvml: FakeNvml) -> None:
    """A driver with no GPU gives CPU-only with a note, the driver version kept."""
    fake_nvml()
    info = detect_hardware()
    assert info.cpu_only and info.driver_version == "535.104.05"
    assert info.note == "NVML found no GPU: CPU only"


# -- generations, slots, node fields -------------------------------------------------------


@pytest.mark.parametrize(("capability", "pk"), [(2.0, 1), (3.0, 2), (7.5, 6), (8.6, 7), (8.9, 8),
                                                (9.0, 9), (1.0, None), (10.0, None), (None, None)])
def test_generation_is_the_row_whose_half_open_range_holds_the_capability(
        capability: float | None, pk: int | None) -> None:
    """[min, max): a capability on a boundary belongs to the newer generation."""
    assert generation_for(capability, HARDWARE_ROWS) == pk


def test_generation_skips_malformed_rows() -> None:
    """Rows with missing or non-numeric bounds are ignored, not fatal."""
    rows: list[dict[str, Any]] = [
        {"pk": 1},
        {"pk": 2, "min_compute_capability": "x", "max_compute_capability": "9"},
        {"pk": 3, "min_compute_capability": 8.0, "max_compute_capability": None}]
    assert generation_for(8.6, rows) == 3


def test_default_slots_are_every_gpu() -> None:
    """With no gpu_indices configured, each GPU found gets a slot."""
    assert slot_indices(_two_gpu_info(), None) == [0, 1]


def test_default_slot_on_a_cpu_only_machine_is_zero() -> None:
    """A CPU-only machine runs one slot, index 0."""
    assert slot_indices(HardwareInfo(cpu_mem_bytes=1), None) == [0]


def test_configured_slots_are_kept() -> None:
    """Configured indices that name GPUs are used as given."""
    assert slot_indices(_two_gpu_info(), [1]) == [1]


def test_configured_missing_gpu_is_a_config_error() -> None:
    """An index with no GPU behind it is refused with one clear line."""
    with pytest.raises(ConfigError) as e:
        slot_indices(_two_gpu_info(), [0, 3])
    assert e.value.problems == ["gpu_indices: no GPU with index 3 on this machine (found: 0, 1)"]


def test_configured_duplicate_and_empty_slots_are_config_errors() -> None:
    """A repeated index, a negative one and an empty list are refused."""
    with pytest.raises(ConfigError, match="listed twice"):
        slot_indices(_two_gpu_info(), [0, 0])
    with pytest.raises(ConfigError, match="negative"):
        slot_indices(_two_gpu_info(), [-1])
    with pytest.raises(ConfigError, match="empty"):
        slot_indices(_two_gpu_info(), [])


def test_configured_slots_on_a_cpu_only_machine_are_allowed() -> None:
    """Several CPU slots may be configured on a machine without GPUs."""
    assert slot_indices(HardwareInfo(cpu_mem_bytes=1), [0, 1]) == [0, 1]
    assert slot_indices(HardwareInfo(cpu_mem_bytes=1), [1, 0]) == [1, 0]


def test_an_index_beyond_the_cpu_slots_names_a_missing_gpu() -> None:
    """[7] on a machine without GPUs is no GPU of it (not a node 7 registered beside node 0)."""
    with pytest.raises(ConfigError) as e:
        slot_indices(HardwareInfo(cpu_mem_bytes=1), [0, 7])
    assert e.value.problems == ["gpu_indices: no GPU with index 7 on this machine (none found; without "
                                "GPUs the indices count CPU slots from 0, e.g. [0] or [0, 1])"]


def test_node_fields_of_a_gpu_slot() -> None:
    """A GPU slot registers its GPU's memory, the driver and the generation from the server's rows."""
    assert node_fields(_two_gpu_info(), 1, HARDWARE_ROWS) == {
        "cpu_mem": 64 * 2**30, "gpu_mem": 80 * 2**30, "driver_version": "535.104.05",
        "hardware_generation": 9}


def test_node_fields_of_a_cpu_slot() -> None:
    """A CPU-only slot registers its memory and nulls for the GPU facts."""
    assert node_fields(HardwareInfo(cpu_mem_bytes=123), 0, HARDWARE_ROWS) == {
        "cpu_mem": 123, "gpu_mem": None, "driver_version": None, "hardware_generation": None}


# -- the machine around us --------------------------------------------------------------


def test_free_disk_bytes_of_a_path_not_yet_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A work directory that does not exist yet is measured on its nearest parent."""
    import shutil

    # Other processes write to this disk: two measurements can differ, so the test watches
    # the one measurement free_disk_bytes makes (the real one) instead of making its own.
    real_disk_usage = shutil.disk_usage
    measured: list[tuple[Path, int]] = []

    def disk_usage(path: str | Path) -> Any:
        usage = real_disk_usage(path)
        measured.append((Path(path), usage.free))
        return usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    (tmp_path / "a").mkdir()
    free = free_disk_bytes(tmp_path / "a" / "b" / "c")
    assert measured == [(tmp_path / "a", free)] and free > 0


def test_node_ip_is_a_usable_ipv4_address() -> None:
    """The detected address is IPv4, and loopback only when nothing else exists."""
    ip = ipaddress.ip_address(node_ip())
    assert ip.version == 4 and not ip.is_unspecified


def test_node_ip_sends_nothing_to_the_probe() -> None:
    """The UDP route lookup connects but sends no datagram (a loopback probe receives nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(0.2)
        node_ip(probe=probe.getsockname())
        with pytest.raises(TimeoutError):
            probe.recv(100)


def test_node_ip_falls_back_when_there_is_no_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a route and without a resolvable host name, the answer is 127.0.0.1."""
    def no_route(*_args: Any) -> Any:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", no_route)
    monkeypatch.setattr(socket, "getaddrinfo", no_route)
    assert node_ip() == "127.0.0.1"


def test_node_ip_falls_back_to_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a route, a non-loopback address of the host name is used."""
    def no_route(*_args: Any) -> Any:
        raise OSError(101, "Network is unreachable")

    answers = [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("127.0.1.1", 0)),
               (socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("10.1.2.3", 0))]
    monkeypatch.setattr(socket.socket, "connect", no_route)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_a: answers)
    assert node_ip() == "10.1.2.3"


# -- display ----------------------------------------------------------------------------


def test_hwinfo_lists_each_gpu_with_its_generation() -> None:
    """hwinfo shows memory, driver and one line per GPU, with generations when rows are given."""
    text = format_hwinfo(_two_gpu_info(), HARDWARE_ROWS)
    assert text.splitlines() == [
        "CPU memory: 64.0 GiB",
        "NVIDIA driver: 535.104.05 (CUDA 12.2)",
        "GPU 0: NVIDIA A100, 40.0 GiB, compute capability 8.0, generation Ampere (pk 7), GPU-a",
        "GPU 1: NVIDIA H100, 80.0 GiB, compute capability 9.0, generation Hopper (pk 9), GPU-b",
    ]


def test_hwinfo_of_a_cpu_only_machine_says_why() -> None:
    """hwinfo on a CPU-only machine says there are no GPUs and why."""
    info = HardwareInfo(cpu_mem_bytes=8 * 2**30, cpu_count=4, note="NVML unavailable (x): CPU only")
    assert format_hwinfo(info).splitlines() == [
        "CPU memory: 8.0 GiB, 4 CPUs", "GPUs: none", "Note: NVML unavailable (x): CPU only"]


def test_hardware_info_as_dict_is_plain_data() -> None:
    """as_dict gives JSON-ready data for hwinfo --json and /status."""
    data = _two_gpu_info().as_dict()
    assert data["gpus"][1]["compute_capability"] == 9.0 and data["cpu_mem_bytes"] == 64 * 2**30
