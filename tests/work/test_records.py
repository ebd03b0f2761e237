"""Docker-image and pretrained-model records, and a Predict job's model, from a loopback server."""

from __future__ import annotations

from pathlib import Path

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.logs import scrub
from ufdl_node.work.records import docker_image, fetch_model, pretrained_model

from .conftest import Harness, zip_bytes

MODEL_TYPE = "Model<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>"
DOCKER = {"pk": 4, "name": "mmclassification", "version": "0.25.0_cuda11.1",
          "url": "registry.example/waikatodatamining/mmclassification:0.25.0_cuda11.1",
          "registry_url": "registry.example", "registry_username": "puller",
          "registry_password": "s3cret-registry-pw",
          "cuda_version": {"pk": 1, "version": "11.1", "full_version": "11.1.1",
                           "min_driver_version": "455.23.05"},
          "framework": {"pk": 2, "name": "mmclassification", "version": "0.25.0"}, "domain": "ic",
          "tasks": ["train", "predict"], "min_hardware_generation": None, "cpu": False,
          "licence": "Apache 2.0"}


async def test_docker_image_by_pk_and_by_versioned_name(ufdl: Harness) -> None:
    """A PK and 'name vversion' both give the record."""
    ufdl.state.docker[4] = DOCKER
    by_pk = await docker_image(ufdl.access(), 4, "PK<DockerImage<Domain<'Image Classification'>, ?>>")
    by_name = await docker_image(ufdl.access(), "mmclassification v0.25.0_cuda11.1",
                                 "Name<DockerImage<Domain<'Image Classification'>, ?>>")
    assert by_pk["url"] == by_name["url"] == DOCKER["url"]


async def test_docker_registry_password_never_reaches_a_log(ufdl: Harness) -> None:
    """After the record is read, its registry password is masked in every log line."""
    ufdl.state.docker[4] = DOCKER
    await docker_image(ufdl.access(), {"pk": 4, "name": "mmclassification", "version": "0.25.0_cuda11.1"})
    assert "s3cret-registry-pw" not in scrub("docker login -p s3cret-registry-pw registry.example")


async def test_missing_docker_image_fails_the_job(ufdl: Harness) -> None:
    """An unknown image pk: 'docker image 99 not found'."""
    with pytest.raises(JobFailed, match=r"^docker image 99 not found$"):
        await docker_image(ufdl.access(), 99)


async def test_pretrained_model_by_bare_name(ufdl: Harness) -> None:
    """Pretrained models are named without a version."""
    ufdl.state.pretrained[2] = {"pk": 2, "name": "resnet18 v2-imagenet", "url": "https://x/r.pth",
                                "framework": 1, "domain": "ic", "metadata": "", "data": None}
    record = await pretrained_model(ufdl.access(), "resnet18 v2-imagenet",
                                    "Name<PretrainedModel<Domain<'Image Classification'>, ?>>")
    assert record["pk"] == 2


async def test_bad_reference_fails_with_one_line(ufdl: Harness) -> None:
    """A value that is no pk, name or record is refused without a call."""
    with pytest.raises(JobFailed, match="neither a primary key, a name nor a record"):
        await pretrained_model(ufdl.access(), [1, 2])
    assert ufdl.state.seen == []


async def test_model_output_is_downloaded_and_unpacked(ufdl: Harness, tmp_path: Path) -> None:
    """A job output's zip (by output pk) lands in dest and is unpacked into dest/model."""
    ufdl.state.outputs[11] = (3, "model", MODEL_TYPE, zip_bytes({"model": b"0.25"}))
    model = await fetch_model(ufdl.access(), 11, tmp_path / "job")
    assert model.directory is not None and (model.directory / "model").read_text() == "0.25"
    assert ufdl.state.count("POST", r"^/v1/job-outputs/11/download$") == 1


async def test_model_output_by_job_name_and_type(ufdl: Harness, tmp_path: Path) -> None:
    """{job, name, type} reads the output through the job's outputs path."""
    ufdl.state.outputs[11] = (3, "model", MODEL_TYPE, zip_bytes({"model": b"0.5"}))
    model = await fetch_model(ufdl.access(), {"job": 3, "name": "model", "type": MODEL_TYPE}, tmp_path)
    assert [p.name for p in model.files] == ["model"]


async def test_model_that_is_not_a_zip_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """An output that is not a zip is refused as a model with one line."""
    ufdl.state.outputs[12] = (3, "model", MODEL_TYPE, b"just text, no archive")
    with pytest.raises(JobFailed, match=r"^job output 12 is not a zip archive"):
        await fetch_model(ufdl.access(), 12, tmp_path)


async def test_missing_model_output_fails_the_job(ufdl: Harness, tmp_path: Path) -> None:
    """A job output pk that does not exist: 'job output 13 not found'."""
    with pytest.raises(JobFailed, match=r"^job output 13 not found$"):
        await fetch_model(ufdl.access(), 13, tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_model_zip_climbing_out_writes_nothing_outside(ufdl: Harness, tmp_path: Path) -> None:
    """A model zip with a '..' member fails the job; nothing lands beside the job's directory."""
    ufdl.state.outputs[14] = (3, "model", MODEL_TYPE, zip_bytes({"../../evil": b"x"}))
    with pytest.raises(JobFailed, match="climbs out"):
        await fetch_model(ufdl.access(), 14, tmp_path / "job")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["job", "model", "model.zip"]
