"""Gating a job on its Docker-image record; the shipped `docker` handler definitions. No Docker needed."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.conftest import wait_for
from ufdl_node.api import HandlerSpec, PluginError
from ufdl_node.api.definitions import load_definition
from ufdl_node.daemon.containers import ContainerHost
from ufdl_node.daemon.images import image_fit, image_parameter
from ufdl_node.errors import ConfigError
from ufdl_node.hardware import GpuInfo
from ufdl_node.protocol import JobView
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings

RECORD: dict[str, Any] = {
    "pk": 3, "name": "mmclassification", "url": "example.org/mmclassification:0.25.0_cuda11.1", "cpu": False,
    "cuda_version": {"version": "11.1", "min_driver_version": "455.23.05"},
    "min_hardware_generation": {"generation": "Pascal", "min_compute_capability": 6.0,
                                "max_compute_capability": 7.0}}
PASCAL = GpuInfo(index=1, name="P100", mem_bytes=16 * 2**30, compute_capability=6.0, uuid="GPU-1",
                 driver_version="470.82.01")


def _docker_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_handler", SHIPPED_HANDLERS_DIR / "docker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_image_fits_a_gpu_meeting_driver_and_generation() -> None:
    """A Pascal GPU with a newer driver runs an image that needs CUDA 11.1 and Pascal."""
    assert image_fit(RECORD, PASCAL) is None


def test_gpu_image_does_not_fit_a_cpu_slot() -> None:
    """An image not marked cpu needs a GPU: a CPU slot gets the reason."""
    assert image_fit(RECORD, None) == \
        "docker image mmclassification needs a GPU (its record is not marked cpu); this slot has none"


def test_cpu_image_fits_a_cpu_slot() -> None:
    """An image marked cpu runs anywhere."""
    assert image_fit({**RECORD, "cpu": True}, None) is None


def test_old_driver_is_refused_with_both_versions() -> None:
    """A driver older than the image's CUDA needs is refused, naming both versions."""
    old = GpuInfo(index=0, name="P100", mem_bytes=2**34, compute_capability=6.0, driver_version="450.51.06")
    assert image_fit(RECORD, old) == \
        "docker image mmclassification needs NVIDIA driver >= 455.23.05 (CUDA 11.1); GPU 0 has 450.51.06"


def test_older_hardware_generation_is_refused() -> None:
    """A Maxwell GPU (5.2) cannot run an image that needs Pascal (6.0)."""
    maxwell = GpuInfo(index=2, name="M60", mem_bytes=2**33, compute_capability=5.2, driver_version="470.1")
    reason = image_fit(RECORD, maxwell)
    assert reason is not None and "needs hardware generation Pascal" in reason and "has 5.2" in reason


def test_the_image_parameter_is_found_by_its_type() -> None:
    """The job's Docker-image parameter is the one whose type names DockerImage."""
    job = JobView.parse({"pk": 7, "template": {"pk": 1, "name": "t", "version": 1}, "parameter_values": {
        "epochs": {"value": 3, "type": "int"},
        "docker_image": {"value": "mmclassification v1", "type": "Name<DockerImage<Domain<'X'>>>"}}})
    assert image_parameter(job) == ("docker_image", "mmclassification v1", "Name<DockerImage<Domain<'X'>>>")


async def test_gate_holds_the_job_until_the_record_is_read_then_says_why() -> None:
    """The first offer waits for the record (read in the background); then the slot's reason is given."""
    reads: list[Any] = []

    async def fetch(value: Any, type_: str) -> dict[str, Any]:
        reads.append(value)
        return RECORD

    host = ContainerHost(SimpleNamespace(docker_url=None, server_url="http://x"), fetch_record=fetch)
    job = JobView.parse({"pk": 9, "template": {"pk": 1, "name": "t", "version": 1}, "parameter_values": {
        "docker_image": {"value": 3, "type": "PK<DockerImage<Domain<'X'>>>"}}})
    try:
        assert host.gate(job, None, 0) == "reading the job's docker image record"
        reason = await wait_for(lambda: host.gate(job, None, 0) != "reading the job's docker image record"
                                and host.gate(job, None, 0))
        assert "needs a GPU" in str(reason)
        assert host.gate(job, PASCAL, 1) is None
        assert reads == [3]  # read once, then cached
    finally:
        await host.close()


# -- the shipped definitions -------------------------------------------------------------------------


def _shipped() -> list[HandlerSpec | PluginError]:
    module = _docker_module()
    settings = SimpleNamespace(docker_template_dirs=[SHIPPED_HANDLERS_DIR / "docker.d"])
    return list(module.handlers(settings))


MMCLS_ARCHS = ("mobilenetv3_small", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50")
STOCK_MMCLS = [f"mmclassification_{v}_{arch}_train" for v in ("0.23.1", "0.25.0") for arch in MMCLS_ARCHS]


def test_shipped_definitions_load() -> None:
    """Every shipped definition loads without a problem, one handler per stock template name
    (the file's name; MMClassification 0.23.1 and 0.25.0 with every variant, YOLOv5 and YOLOv7
    among them); the ``_`` bases make none."""
    specs = _shipped()
    assert [s for s in specs if isinstance(s, PluginError)] == []
    names = sorted(t for s in specs if isinstance(s, HandlerSpec) for t in s.templates)
    assert names == sorted(p.stem for p in SHIPPED)
    assert {*STOCK_MMCLS, "mmclassification_0.25.0_image_class_predict", "yolo_v5_objectdetection-train",
            "yolo_v7_objectdetection-predict"} <= set(names)


SHIPPED = sorted(p for p in (SHIPPED_HANDLERS_DIR / "docker.d").glob("*.toml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_definition_placeholders_all_have_values(path: Path) -> None:
    """Every ${name} in a shipped definition's commands, env and body default has a value at run time."""
    config = load_definition(path)
    provided = set(config.get("parameters", {})) | set(config.get("values", {})) | {"job_pk", "workspace"}
    if config.get("labels"):
        provided |= {"num-classes", "classes"}
        provided |= {str(config["labels"][k]) for k in ("quoted", "count_plus_one") if k in config["labels"]}
    if config.get("pretrained"):
        provided.add(config["pretrained"].get("config_value", "pretrained_model_config"))
    texts = [str(config["commands"]), str(config.get("env", {}))]
    texts += [str(p.get("default", "")) for p in config.get("parameters", {}).values()]
    used = {m.group(1) for text in texts for m in re.finditer(r"\$\{[+-]?([^:}]+)", text)}
    assert used - provided == set()


def test_unknown_key_in_a_definition_is_a_settings_error(tmp_path: Path) -> None:
    """A typo in a definition is an error at start, one line naming the file and the key; the
    registry raises it (the daemon exits 2) rather than leaving the template out."""
    (tmp_path / "bad.toml").write_text('image = "x"\ncommands = ["true"]\ncomand = "oops"\n')
    module = _docker_module()
    [problem] = module.handlers(SimpleNamespace(docker_template_dirs=[tmp_path]))
    assert isinstance(problem, ConfigError)
    assert str(problem).startswith(f"{tmp_path / 'bad.toml'}: docker template 'bad': unknown key 'comand' "
                                   "(known: cache, commands, ")
    with pytest.raises(ConfigError, match="unknown key 'comand'"):
        Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False,
                      settings=NodeSettings(password="x", docker_template_dirs=[tmp_path]))


def test_docker_settings_have_sane_defaults() -> None:
    """Pull if missing, 8 GiB of /dev/shm, Docker's own network, no extra mounts or templates."""
    settings = NodeSettings(password="x")
    assert (settings.docker_pull_policy, settings.docker_shm_size_bytes, settings.docker_network_mode,
            settings.docker_user, settings.docker_binds, settings.docker_templates) == \
        ("if-missing", 8 * 2**30, None, None, [], {})


def test_docker_user_must_be_numeric() -> None:
    """A user name is refused: the container's uid:gid must not depend on the image's /etc/passwd."""
    from ufdl_node.errors import ConfigError
    from ufdl_node.settings import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(NodeSettings, password="x", docker_user="root")
    assert "docker_user" in str(info.value)



async def test_no_refusal_is_logged_while_the_image_record_is_being_read(tmp_path: Path) -> None:
    """While the gate reads the job's image record, the poller says nothing of slots not meeting the
    handler's needs (nothing was refused yet); once the record says the image needs a GPU, it does,
    with the slot's reason."""
    from structlog.testing import capture_logs

    from ufdl_node.client import UfdlClient
    from ufdl_node.daemon.poller import Poller
    from ufdl_node.metrics import Metrics

    release = asyncio.Event()

    async def fetch(value: Any, type_: str) -> dict[str, Any]:
        await release.wait()
        return RECORD

    host = ContainerHost(SimpleNamespace(docker_url=None, server_url="http://x"), fetch_record=fetch)
    settings = NodeSettings(password="x", state_dir=tmp_path)
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=settings)
    slot = SimpleNamespace(containers=host, gpu=None, index=0, not_acquired=None)
    slot.can_serve = lambda spec, job: host.gate(job, None, 0)
    raw = {"pk": 9, "template": {"pk": 1, "name": "demo_train", "version": 1}, "parameter_values": {
        "docker_image": {"value": 3, "type": "PK<DockerImage<Domain<'X'>>>"}}}
    async with UfdlClient("http://127.0.0.1:9", "u", "p") as client:
        poller = Poller(client, registry, settings, Metrics())
        try:
            with capture_logs() as logs:
                assert poller._offer(raw, slot) is True  # type: ignore[arg-type]  # kept for later
                assert not [e for e in logs if "meets" in e["event"]], logs
                release.set()
                await wait_for(lambda: host.gate(JobView.parse(raw), None, 0) != "reading the job's "
                               "docker image record")
                assert poller._offer(raw, slot) is True  # type: ignore[arg-type]
            [said] = [e for e in logs if "meets" in e["event"]]
            assert "needs a GPU" in str(said["reason"]), said
        finally:
            await host.close()
