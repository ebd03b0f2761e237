"""The work toolkit on JobContext where no server is needed: inputs, confinement, zips, metadata."""

from __future__ import annotations

import json
import zipfile

import pytest

from ufdl_node.api import JobFailed

from .conftest import FakeIO, MakeCtx


async def test_ctx_server_needs_an_io_that_offers_one(make_ctx: MakeCtx) -> None:
    """A JobIO without server_io (a test fake): ctx.server fails the job with one line."""
    with pytest.raises(JobFailed, match=r"^this job's IO gives handlers no access to the server$"):
        _ = make_ctx().server


async def test_ctx_dataset_of_a_missing_input_names_the_inputs_there_are(make_ctx: MakeCtx) -> None:
    """ctx.dataset('images') on a job without that input names the job's inputs."""
    ctx = make_ctx(inputs={"model": {"value": 3, "type": "JobOutput<Model>"}})
    with pytest.raises(JobFailed, match=r"^the job has no input 'images' \(it has: model\)$"):
        await ctx.dataset("images")


async def test_upload_zip_of_a_directory_uploads_one_zip(make_ctx: MakeCtx, io: FakeIO) -> None:
    """upload_zip(name, type, dir): the directory's files zipped under their relative names."""
    ctx = make_ctx()
    (ctx.work_dir / "out" / "sub").mkdir(parents=True)
    (ctx.work_dir / "out" / "a.txt").write_text("a")
    (ctx.work_dir / "out" / "sub" / "b.txt").write_text("b")
    zip_path = await ctx.upload_zip("model", "Model<Blob>", "out")
    assert io.uploads["model"][0] == "Model<Blob>"
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "sub/b.txt"]


async def test_upload_zip_refuses_a_file_outside_the_job(make_ctx: MakeCtx, io: FakeIO) -> None:
    """A file outside the work and cache directories is never zipped into an output."""
    ctx = make_ctx()
    with pytest.raises(JobFailed, match="outside the job's work and cache directories"):
        await ctx.upload_zip("model", "Blob", ["/etc/hostname"])
    assert io.uploads == {}


async def test_upload_metadata_uploads_json(make_ctx: MakeCtx, io: FakeIO) -> None:
    """upload_metadata(data): output metadata/JSON with the data as JSON."""
    await make_ctx().upload_metadata({"frontend": None, "job": {"accuracy": 0.5}})
    type_, data = io.uploads["metadata"]
    assert type_ == "JSON" and json.loads(data) == {"frontend": None, "job": {"accuracy": 0.5}}


def test_expand_takes_the_parameters_and_extra_values(make_ctx: MakeCtx) -> None:
    """ctx.expand: ${param} from the job, extra values for the rest, flags drop lines."""
    ctx = make_ctx(template_params={"epochs": {"types": ["int"], "default": 4},
                                    "fp16": {"types": ["bool"], "default": False}})
    body = ["epochs = ${epochs}", "data = '${data}'", "${+fp16:fp16 = True}"]
    assert ctx.expand(body, data="/d", epochs=99) == ["epochs = 4", "data = '/d'"]
