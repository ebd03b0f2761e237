"""Fixtures for the operations building blocks: a fake NVML, a notify socket, a status server."""

from __future__ import annotations

import socket
import sys
import tempfile
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.daemon.status import StatusServer
from ufdl_node.metrics import Metrics


@dataclass
class FakeGpu:
    name: str = "NVIDIA RTX A6000"
    mem_bytes: int = 48 * 2**30
    capability: tuple[int, int] = (8, 6)
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    broken: bool = False  # every query for this GPU raises NVMLError


@dataclass
class FakeNvmlState:
    gpus: list[FakeGpu] = field(default_factory=list)
    driver: Any = "535.104.05"
    cuda: int = 12020
    init_error: bool = False
    init_calls: int = 0
    shutdown_calls: int = 0


def make_fake_pynvml(state: FakeNvmlState) -> types.ModuleType:
    """A module with the few NVML calls hardware.py makes, answering from `state`."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def device(handle: int) -> FakeGpu:
        gpu = state.gpus[handle]
        if gpu.broken:
            raise NVMLError("GPU is lost")
        return gpu

    def nvml_init() -> None:
        state.init_calls += 1
        if state.init_error:
            raise NVMLError("Driver Not Loaded")

    def nvml_shutdown() -> None:
        state.shutdown_calls += 1

    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.nvmlInit = nvml_init  # type: ignore[attr-defined]
    mod.nvmlShutdown = nvml_shutdown  # type: ignore[attr-defined]
    mod.nvmlSystemGetDriverVersion = lambda: state.driver  # type: ignore[attr-defined]
    mod.nvmlSystemGetCudaDriverVersion = lambda: state.cuda  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: len(state.gpus)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: device(h).name  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUUID = lambda h: device(h).uuid  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = (  # type: ignore[attr-defined]
        lambda h: types.SimpleNamespace(total=device(h).mem_bytes, free=0, used=0))
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: device(h).capability  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeNvmlState]:
    """Install a fake `pynvml` in sys.modules: fake_nvml(FakeGpu(...), ..., init_error=False)."""

    def install(*gpus: FakeGpu, **options: Any) -> FakeNvmlState:
        state = FakeNvmlState(gpus=list(gpus), **options)
        monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(state))
        return state

    return install


class NotifyListener:
    """The systemd side of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it
        self.sock = sock

    def receive(self, timeout_s: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError):
            return False
        return True


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    """A notify socket at a file path (short: AF_UNIX paths stop at 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ufdl-n") as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield NotifyListener(path, sock)


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifyListener]:
    """A notify socket in the abstract namespace (NOTIFY_SOCKET=@name)."""
    name = f"ufdl-node-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield NotifyListener("@" + name, sock)


@pytest.fixture
async def status_server() -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await status_server(healthy=..., status=...)` starts one on a free loopback port."""
    started: list[StatusServer] = []

    async def start(*, healthy: Any = lambda: True, status: Any = dict,
                    metrics: Metrics | None = None, listen: str = "127.0.0.1:0") -> StatusServer:
        server = StatusServer(listen, status=status, healthy=healthy, metrics=metrics or Metrics())
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()
