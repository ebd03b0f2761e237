"""The pure part of the container layer: create config, spec checks, log parsing; no Docker needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ufdl_node.containers.engine import ContainerEngine, EngineFacts, registry_host
from ufdl_node.containers.spec import (
    ContainerConfigError,
    ContainerSpec,
    LogCursor,
    LogLine,
    create_config,
    default_user,
    parse_frames,
    timestamp_ns,
)


def _spec(**kwargs: Any) -> ContainerSpec:
    values: dict[str, Any] = {"image": "reg.example:5000/mmcls:0.25.0", "command": "python train.py",
                              "node": "gpu-box", "slot": "1", "job_pk": 42}
    values.update(kwargs)
    return ContainerSpec(**values)


def test_create_config_for_a_gpu_job_is_the_exact_engine_json() -> None:
    """A GPU job: one device request by UUID, mounts, shm size, network, user, labels, env."""
    spec = _spec(work_dir=Path("/var/lib/ufdl/jobs/42"), cache_dir=Path("/var/cache/ufdl"),
                 binds=["/data:/data:ro"], env={"B": "2", "A": "1"}, user="1000:1000",
                 shm_size_bytes=8 * 2**30, network_mode="none", gpu_uuid="GPU-5f1c",
                 labels={"org.example.team": "vision"})

    assert create_config(spec) == {
        "Image": "reg.example:5000/mmcls:0.25.0",
        "Cmd": ["/bin/sh", "-c", "python train.py"],
        "Env": ["A=1", "B=2"],
        "User": "1000:1000",
        "WorkingDir": "/workspace",
        "Labels": {"org.example.team": "vision", "org.ufdl.node.node": "gpu-box",
                   "org.ufdl.node.slot": "1", "org.ufdl.node.job": "42"},
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": {
            "Binds": ["/var/lib/ufdl/jobs/42:/workspace", "/var/cache/ufdl:/.cache", "/data:/data:ro"],
            "Init": True,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "64m", "max-file": "4"}},
            "ShmSize": 8 * 2**30,
            "NetworkMode": "none",
            "DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["GPU-5f1c"], "Capabilities": [["gpu"]]}],
        },
    }


def test_create_config_for_a_cpu_job_requests_no_device() -> None:
    """No GPU UUID: no DeviceRequests at all, an argument list stays a list, no working dir."""
    config = create_config(_spec(command=["python", "predict.py", "--x", "a b"]))

    assert "DeviceRequests" not in config["HostConfig"]
    assert config["Cmd"] == ["python", "predict.py", "--x", "a b"]
    assert "WorkingDir" not in config and config["HostConfig"]["Binds"] == []


def test_spec_labels_cannot_override_the_node_labels() -> None:
    """The node/slot/job labels win over extra labels of the same name."""
    config = create_config(_spec(labels={"org.ufdl.node.job": "7"}))

    assert config["Labels"]["org.ufdl.node.job"] == "42"


def test_default_user_is_never_root() -> None:
    """The daemon's own uid:gid, or nobody when the daemon is root."""
    user = default_user()

    assert not user.startswith("0:") and create_config(_spec())["User"] == user


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image": ""}, "image reference"),
    ({"command": "  "}, "command is empty"),
    ({"command": []}, "command is empty"),
    ({"work_dir": Path("jobs/1")}, "work_dir 'jobs/1' is not an absolute path"),
    ({"binds": ["/a"]}, "bind '/a'"),
    ({"binds": ["/a:/b:rx"]}, "bind '/a:/b:rx'"),
    ({"env": {"BAD-NAME": "x"}}, "environment name 'BAD-NAME'"),
    ({"user": "root"}, "user 'root' is not uid or uid:gid"),
    ({"shm_size_bytes": 0}, "shm_size_bytes 0"),
    ({"labels": {"Bad Label": "x"}}, "label 'Bad Label'"),
])
def test_bad_spec_is_refused_with_one_line(kwargs: dict[str, Any], message: str) -> None:
    """Each unusable field gives a ContainerConfigError naming the job and the field."""
    with pytest.raises(ContainerConfigError, match="job 42") as caught:
        _spec(**kwargs)

    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_timestamps_compare_across_trimmed_fractions_and_offsets() -> None:
    """Nanosecond timestamps parse to one scale whatever their fraction digits or zone."""
    assert timestamp_ns("2026-12-03T07:48:00.5Z") == timestamp_ns("2026-12-03T07:48:00.500000000Z")
    one_ns_past = timestamp_ns("2026-12-03T07:48:00.000000001Z")
    assert timestamp_ns("2026-12-03T08:48:00.000000001+01:00") == one_ns_past
    assert LogCursor("2026-12-03T07:48:00.000000001Z").since_param() == "1796284080.000000001"


async def _parse(frames: list[str], after: LogCursor | None = None) -> list[LogLine]:
    return [line async for line in parse_frames(frames, after)]


async def test_long_message_split_into_frames_is_one_line() -> None:
    """Partial frames (no newline) join into one line under the first frame's timestamp."""
    frames = ["2026-12-03T07:48:00.1Z abc", "2026-12-03T07:48:00.2Z def\n", "2026-12-03T07:48:00.3Z g\n"]

    assert await _parse(frames) == [LogLine("2026-12-03T07:48:00.1Z", "abcdef"),
                                    LogLine("2026-12-03T07:48:00.3Z", "g")]


async def test_resume_skips_exactly_the_lines_already_seen_at_a_shared_timestamp() -> None:
    """Two lines sharing the cursor's timestamp: only the one already read is skipped."""
    t1, t2, t3 = "2026-12-03T07:48:00.1Z", "2026-12-03T07:48:00.2Z", "2026-12-03T07:48:00.3Z"
    frames = [f"{t1} a\n", f"{t2} b\n", f"{t2} c\n", f"{t3} d\n"]
    first = (await _parse(frames))[:2]

    rest = await _parse(frames, LogCursor.after(first))

    assert [line.text for line in first + rest] == ["a", "b", "c", "d"]


def test_registry_host_is_read_from_the_reference() -> None:
    """A host has a dot, a port or is localhost; Docker Hub's short names have none."""
    assert registry_host("127.0.0.1:5000/a/b:1") == "127.0.0.1:5000"
    assert registry_host("localhost/a") == "localhost"
    assert registry_host("waikatodatamining/mmclassification:0.25.0_cuda11.1") is None
    assert registry_host("busybox") is None


async def test_probe_of_an_absent_docker_gives_the_reason_in_one_line(tmp_path: Path) -> None:
    """No socket: reachable is False with a one-line reason naming the address, no exception."""
    url = f"unix://{tmp_path}/docker.sock"
    async with ContainerEngine(url) as engine:
        facts = await engine.probe()

    assert not facts.reachable and facts.reason and "\n" not in facts.reason
    assert facts.summary().startswith(f"Docker not reachable at {url}: ")


def test_facts_say_whether_gpus_can_be_given_to_containers() -> None:
    """The NVIDIA runtime or CDI spec dirs make GPUs available; the summary says which."""
    plain = EngineFacts(True, server_version="27.1.1", api_version="1.46", runtimes=("runc",))
    nvidia = EngineFacts(True, server_version="27.1.1", api_version="1.46", runtimes=("nvidia", "runc"))
    cdi = EngineFacts(True, server_version="27.1.1", api_version="1.46", cdi_spec_dirs=("/etc/cdi",))

    assert (plain.gpus_supported, nvidia.gpus_supported, cdi.gpus_supported) == (False, True, True)
    assert nvidia.summary() == "Docker 27.1.1 (API 1.46), NVIDIA runtime: yes, CDI: no"
