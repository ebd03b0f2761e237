"""dogs_dummy and the work toolkit through the daemon, on the embedded server behind a fault proxy.

The proxy counts the node's requests (the dataset cache) and injects the faults of
``ctx.download`` (a dropped connection, a permanent 500); bad inputs each end the job
with a one-line reason.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ufdl_node.cli.local import LocalRun, local_inputs, output_from_file
from ufdl_node.client import UfdlClient
from ufdl_node.daemon.logoutput import LOG_NAME, LOG_TYPE, log_lines
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.protocol import display_phase
from ufdl_node.registry import Registry, load_module_file
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings, ServerSettings

from ..faults import FaultProxy
from .images import image_folder

dd = load_module_file(SHIPPED_HANDLERS_DIR / "_dogs_dummy_model.py")  # beside its handler

ADMIN_PW, WORKER_PW = "dd-admin-pw-1", "dd-worker-pw-2"
MODEL_INPUT = f"JobOutput<{dd.MODEL_TYPE}>"
FETCHER = '''
from ufdl_node.api import JobContext, TemplateDescription, handler

@handler("fetch_archive", description=TemplateDescription(
    job_type="Train", domain="Image Classification",
    inputs={"dataset": "PK<Dataset<Domain<'Image Classification'>>>"}))
async def run(ctx: JobContext) -> None:
    path = await ctx.download(f"/v1/datasets/{ctx.inputs['dataset'].value}/download", "data.zip")
    await ctx.upload("archive", "Blob", path)
'''

RELABEL = '''
import json

from ufdl_node.api import JobContext, TemplateDescription, handler

@handler("relabel", description=TemplateDescription(
    job_type="Train", domain="Image Classification",
    inputs={"dataset": "PK<Dataset<Domain<'Image Classification'>>>"}))
async def run(ctx: JobContext) -> None:
    dataset = await ctx.dataset()
    added = await ctx.add_labels(dataset, ["dog0.png", "cat0.png"], ["pet"])
    removed = await ctx.remove_labels(dataset.pk, ["dog0.png"], ["dog", "wolf"])
    await ctx.upload("changes", "JSON", json.dumps([added, removed]).encode())
'''

RECORDS = '''
from ufdl_node.api import JobContext, Parameter, TemplateDescription, handler

@handler("read_records", description=TemplateDescription(parameters=(
    Parameter("docker_image", ("Name<DockerImage<Domain<'Image Classification'>>>",), "mmclassification v1"),
    Parameter("pretrained_model", ("Name<PretrainedModel>",), "resnet18"),
    Parameter("epochs", ("int",), 3),
    Parameter("body", ("Array<str>",),
              ["epochs = ${epochs}", "image = '${image}'", "weights = '${weights}'"]),
)))
async def run(ctx: JobContext) -> None:
    image = await ctx.docker_image()
    model = await ctx.pretrained_model()
    ctx.log.info("pulling", url=image["url"], password=image["registry_password"])
    config = ctx.expand(ctx.params["body"], image=image["url"], weights=model["url"])
    await ctx.upload("config", "String", "\\n".join(config).encode())
'''
DOCKER = {"name": "mmclassification", "version": "1", "url": "example.org/mmclassification:0.25.0",
          "registry_url": "example.org", "registry_username": "puller", "registry_password": "s3cret-pw-42",
          "cuda_version": "11.1", "framework": {"name": "mmclass", "version": "0.25.0"}, "domain": "ic",
          "tasks": ["Train", "Predict"], "min_hardware_generation": None, "cpu": True,
          "licence": "Apache 2.0"}
RESNET = {"name": "resnet18", "description": "resnet18 on ImageNet", "url": "https://example.org/r18.pth",
          "metadata": {}, "framework": {"name": "mmclass", "version": "0.25.0"}, "domain": "ic",
          "licence": "Apache 2.0"}


@dataclass
class Ufdl:
    """The embedded server, a proxy the node goes through, an admin client and a node's settings."""

    run: LocalRun
    proxy: FaultProxy
    tmp: Path
    registry: Registry

    async def job(self, template: str, inputs: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Create a job of `template` (inputs: {name: value}, folders become datasets), run the
        daemon until no work is left, and return the job as it ended."""
        spec = self.registry.for_template(template, 1)
        assert spec is not None and spec.description is not None
        template_pk = await self.run.ensure_template(spec, template)
        declared = spec.description.inputs
        values = await local_inputs(self.run.admin, {n: {"value": v, "type": declared[n]}
                                                     for n, v in inputs.items()}, Console(quiet=True))
        types = dict(spec.description.template_parameters())
        if "frontend_metadata" in types:  # required by the stock templates, as on the real server
            params.setdefault("frontend_metadata", None)
        job = await self.run.admin.create_job(template_pk, values, {
            n: {"value": v, "type": types[n]["types"][0]} for n, v in params.items()})
        settings = NodeSettings(
            server_url=self.proxy.url, username="worker", password=WORKER_PW, gpu_indices=[0],
            state_dir=self.tmp / "state", cache_dir=self.tmp / "cache",
            handler_dirs=[SHIPPED_HANDLERS_DIR, self.tmp / "handlers"], poll_interval_s=0.2,
            poll_jitter_s=0.0, exit_when_idle=True, handler_io_retry_s=1.0, log_level="error")
        assert await Supervisor(settings, registry=self.registry).run() == 0
        return await self.run.admin.get_job(int(job["pk"]))

    async def model_output(self, content: bytes) -> int:
        """A job output holding `content`, of the type a dogs_dummy model has: its pk."""
        path = self.tmp / "model-upload.zip"
        path.write_bytes(content)
        return await output_from_file(self.run, path, "model", dd.MODEL_TYPE)


@pytest.fixture
async def ufdl(tmp_path: Path) -> AsyncIterator[Ufdl]:
    """A fresh server and proxy; the test handler `fetch_archive` in a handler directory."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "fetch_archive.py").write_text(FETCHER)
    (tmp_path / "handlers" / "read_records.py").write_text(RECORDS)
    (tmp_path / "handlers" / "relabel.py").write_text(RELABEL)
    registry = Registry.load([SHIPPED_HANDLERS_DIR, tmp_path / "handlers"], entry_points=False)
    assert registry.problems == []
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, admin=f"admin:{ADMIN_PW}",
                              worker=f"worker:{WORKER_PW}", log_level="error")
    async with EmbeddedServer(settings) as server, FaultProxy(server.url) as proxy, \
            UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        yield Ufdl(LocalRun(server, admin, ADMIN_PW, WORKER_PW, tmp_path), proxy, tmp_path, registry)


def reason(job: dict[str, Any]) -> str:
    """The job's error: it must have ended ERRORED with exactly one line."""
    assert str(display_phase(job)) == "ERRORED", job
    text = str(job["error_reason"])
    assert "\n" not in text and text.strip() == text, text
    return text


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


async def test_a_second_job_on_the_same_dataset_downloads_no_file(ufdl: Ufdl) -> None:
    """Two train jobs on one dataset: the files come from the server once, then from the cache."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 3, "cat": 2})
    first = await ufdl.job(dd.TRAIN_TEMPLATE, {"dataset": str(pets)}, factor=5)
    assert str(display_phase(first)) == "FINISHED", first.get("error_reason")
    assert ufdl.proxy.count("GET", r"^/v1/datasets/\d+/files/") == 5
    dataset_pk = first["input_values"]["dataset"]["value"]
    second = await ufdl.job(dd.TRAIN_TEMPLATE, {"dataset": dataset_pk}, factor=5)
    assert str(display_phase(second)) == "FINISHED", second.get("error_reason")
    assert ufdl.proxy.count("GET", r"^/v1/datasets/\d+/files/") == 5
    assert ufdl.proxy.count("GET", rf"^/v1/datasets/{dataset_pk}$") == 2  # the record was read again


async def labels_of(ufdl: Ufdl, job: dict[str, Any]) -> dict[str, list[str]]:
    dataset_pk = job["input_values"]["dataset"]["value"]
    reply = await ufdl.run.admin.request("GET", f"/v1/classify/datasets/{dataset_pk}/categories")
    return {name: sorted(labels) for name, labels in reply.items()}


async def metadata_of(ufdl: Ufdl, job: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(await output_text(ufdl, job, "metadata", "JSON")))


async def test_predict_stores_its_predictions_back_into_the_dataset(ufdl: Ufdl) -> None:
    """store_predictions: each image's labels become its prediction, with the real calls
    (PATCH add/remove), nothing cleared; a labelled file that is no image keeps its label;
    a second predict replaces the first's labels, none lost, none duplicated."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 2, "cat": 2})
    (pets / "dog" / "notes.txt").write_text("a dog's notes")
    model = await ufdl.model_output(zipped({"model": b"0.0"}))  # every image wrong: dog <-> cat
    job = await ufdl.job(dd.PREDICT_TEMPLATE, {"model": model, "dataset": str(pets)})
    assert str(display_phase(job)) == "FINISHED", job.get("error_reason")
    swapped = {"cat0.png": ["dog"], "cat1.png": ["dog"], "dog0.png": ["cat"], "dog1.png": ["cat"],
               "notes.txt": ["dog"]}
    assert await labels_of(ufdl, job) == swapped
    assert ufdl.proxy.count("DELETE", r"/clear$") == 0 and ufdl.proxy.count("POST", r"/categories$") == 0
    meta = await metadata_of(ufdl, job)
    assert list(meta["job"]) == ["executor", "model", "num_files", "per_class", "files", "num_correct",
                                 "accuracy"]
    assert (meta["job"]["executor"], meta["job"]["model"], meta["job"]["num_files"],
            meta["job"]["num_correct"], meta["job"]["accuracy"]) == ("predict", 0.0, 4, 0, 0.0)

    again = await ufdl.job(dd.PREDICT_TEMPLATE, {"model": model,
                                                 "dataset": job["input_values"]["dataset"]["value"]})
    assert str(display_phase(again)) == "FINISHED", again.get("error_reason")
    assert await labels_of(ufdl, again) == {"cat0.png": ["cat"], "cat1.png": ["cat"], "dog0.png": ["dog"],
                                            "dog1.png": ["dog"], "notes.txt": ["dog"]}


async def test_a_refused_label_call_fails_the_predict_with_one_line(ufdl: Ufdl) -> None:
    """The server refuses the label calls: the job ERRORs with one line saying how far it got,
    the labels are as they were, and the metadata of the run is uploaded all the same."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 1, "cat": 1})
    model = await ufdl.model_output(zipped({"model": b"0.0"}))
    ufdl.proxy.fail("PATCH", r"/categories$", status=403)
    job = await ufdl.job(dd.PREDICT_TEMPLATE, {"model": model, "dataset": str(pets)})
    dataset_pk = job["input_values"]["dataset"]["value"]
    assert reason(job).startswith(f"dataset {dataset_pk}: storing the predictions stopped after "
                                  "0 label call(s): ")
    assert await labels_of(ufdl, job) == {"cat0.png": ["cat"], "dog0.png": ["dog"]}
    assert (await metadata_of(ufdl, job))["job"]["executor"] == "predict"


async def test_a_handler_adds_and_removes_labels_with_the_real_calls(ufdl: Ufdl) -> None:
    """ctx.add_labels / ctx.remove_labels: PATCH add/remove, answering just the changes made."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 1, "cat": 1})
    job = await ufdl.job("relabel", {"dataset": str(pets)})
    assert str(display_phase(job)) == "FINISHED", job.get("error_reason")
    assert json.loads(await output_text(ufdl, job, "changes", "JSON")) == [
        {"cat0.png": ["pet"], "dog0.png": ["pet"]}, {"dog0.png": ["dog"]}]
    assert await labels_of(ufdl, job) == {"cat0.png": ["cat", "pet"], "dog0.png": ["pet"]}
    assert ufdl.proxy.count("PATCH", r"/categories$") == 2


async def test_train_uploads_the_plugins_metadata(ufdl: Ufdl) -> None:
    """Train's metadata: executor, num_files, factor, score, files, accuracy (share right), model."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 3, "cat": 1})
    job = await ufdl.job(dd.TRAIN_TEMPLATE, {"dataset": str(pets)}, factor=8,
                         frontend_metadata={"ui": "x"})
    assert str(display_phase(job)) == "FINISHED", job.get("error_reason")
    meta = await metadata_of(ufdl, job)
    assert meta["frontend"] == {"ui": "x"}
    assert list(meta["job"]) == ["executor", "num_files", "factor", "score", "files", "accuracy", "model"]
    assert (meta["job"]["executor"], meta["job"]["num_files"], meta["job"]["score"],
            meta["job"]["accuracy"], meta["job"]["model"]) == ("train", 4, 4, 1.0, 0.5)


async def test_a_dataset_that_does_not_exist_fails_the_job_with_one_line(ufdl: Ufdl) -> None:
    """A dataset pk the server does not have: 'dataset 999 not found'."""
    job = await ufdl.job(dd.TRAIN_TEMPLATE, {"dataset": 999})
    assert reason(job) == "dataset 999 not found"


async def test_a_dataset_of_another_domain_fails_the_job_with_one_line(ufdl: Ufdl) -> None:
    """An object-detection dataset for an image-classification template is refused by domain."""
    boxes = image_folder(ufdl.tmp / "boxes", {"x": 1})
    record = await ufdl.run.admin.request("POST", "/v1/objdet/datasets/create",
                                          json={"name": "boxes", "project": 1, "licence": 1, "tags": ""})
    await ufdl.run.admin.request("POST", f"/v1/objdet/datasets/{record['pk']}/files/x0.png",
                                 data=(boxes / "x" / "x0.png").read_bytes(),
                                 headers={"Content-Disposition": 'attachment; filename="x0.png"'})
    job = await ufdl.job(dd.TRAIN_TEMPLATE, {"dataset": record["pk"]})
    assert reason(job) == (f"dataset {record['pk']} (boxes v1) is in domain Object Detection; "
                           "this job needs Image Classification")


async def test_an_empty_dataset_fails_the_job_with_one_line(ufdl: Ufdl) -> None:
    """A dataset without files: 'is empty'."""
    record = await ufdl.run.admin.request("POST", "/v1/classify/datasets/create",
                                          json={"name": "void", "project": 1, "licence": 1, "tags": ""})
    job = await ufdl.job(dd.TRAIN_TEMPLATE, {"dataset": record["pk"]})
    assert reason(job) == f"dataset {record['pk']} (void v1) is empty: it has no files"


async def test_a_model_that_is_not_a_zip_fails_the_job_with_one_line(ufdl: Ufdl) -> None:
    """A model output holding plain text is no model of a stock Train job."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 1})
    model = await ufdl.model_output(b"0.5")
    job = await ufdl.job(dd.PREDICT_TEMPLATE, {"model": model, "dataset": str(pets)})
    assert reason(job) == f"job output {model} is not a zip archive, so it is no model of a stock Train job"


async def test_a_model_zip_that_climbs_out_fails_the_job_and_writes_nothing_outside(ufdl: Ufdl) -> None:
    """A model zip with a '../' member fails the job; no file lands outside the job's directory."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 1})
    model = await ufdl.model_output(zipped({"model": b"1.0", "../../../escaped.txt": b"x"}))
    job = await ufdl.job(dd.PREDICT_TEMPLATE, {"model": model, "dataset": str(pets)})
    assert "climbs out with '..'" in reason(job)
    assert list(ufdl.tmp.rglob("escaped.txt")) == []


async def test_ctx_download_posts_for_an_archive_and_retries_a_dropped_connection(ufdl: Ufdl) -> None:
    """ctx.download of .../download POSTs (the real server 500s on GET) and survives one drop."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 2})
    ufdl.proxy.drop("POST", r"/download$", times=1)
    job = await ufdl.job("fetch_archive", {"dataset": str(pets)})
    assert str(display_phase(job)) == "FINISHED", job.get("error_reason")
    assert ufdl.proxy.count("POST", r"/download$") == 2 and ufdl.proxy.count("GET", r"/download$") == 0
    archive = ufdl.tmp / "archive.zip"
    await ufdl.run.admin.download_output(int(job["pk"]), "archive", "Blob", archive)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["dog0.png", "dog1.png"]


async def test_a_permanent_500_on_ctx_download_fails_the_job_within_handler_io_retry_s(ufdl: Ufdl) -> None:
    """A download the server keeps answering with 500 ends the job with the reason, not an endless wait."""
    pets = image_folder(ufdl.tmp / "pets", {"dog": 1})
    ufdl.proxy.fail("POST", r"/download$", status=500)
    job = await ufdl.job("fetch_archive", {"dataset": str(pets)})
    assert "the server did not answer properly for 1 s" in reason(job)
    assert "HTTP 500" in reason(job)


async def output_text(ufdl: Ufdl, job: dict[str, Any], name: str, type_: str) -> str:
    target = ufdl.tmp / f"{name}.out"
    await ufdl.run.admin.download_output(int(job["pk"]), name, type_, target)
    return target.read_text()


async def test_handlers_read_docker_and_pretrained_records_and_expand_a_body(ufdl: Ufdl) -> None:
    """ctx.docker_image and ctx.pretrained_model by name, ctx.expand with parameters and extra values;
    the registry password never reaches the job log."""
    await ufdl.run.admin.request("POST", "/v1/docker/create", json=DOCKER)
    await ufdl.run.admin.request("POST", "/v1/pretrained-models/create", json=RESNET)
    job = await ufdl.job("read_records", {})
    assert str(display_phase(job)) == "FINISHED", job.get("error_reason")
    assert await output_text(ufdl, job, "config", "String") == (
        "epochs = 3\nimage = 'example.org/mmclassification:0.25.0'\nweights = 'https://example.org/r18.pth'")
    target = ufdl.tmp / "log.zip"
    await ufdl.run.admin.download_output(int(job["pk"]), LOG_NAME, LOG_TYPE, target)
    log = "\n".join(log_lines(target.read_bytes()))
    assert "pulling" in log and "s3cret-pw-42" not in log


async def test_a_placeholder_without_a_value_fails_the_job_naming_it(ufdl: Ufdl) -> None:
    """A body with ${nope}: one line naming the placeholder."""
    await ufdl.run.admin.request("POST", "/v1/docker/create", json=DOCKER)
    await ufdl.run.admin.request("POST", "/v1/pretrained-models/create", json=RESNET)
    job = await ufdl.job("read_records", {}, body=["epochs = ${epochs}", "lr = ${nope}"])
    assert reason(job) == "body: no value for ${nope}"


async def test_a_docker_image_that_does_not_exist_fails_the_job_with_one_line(ufdl: Ufdl) -> None:
    """A docker_image name the server does not know: 'docker image ... not found'."""
    await ufdl.run.admin.request("POST", "/v1/pretrained-models/create", json=RESNET)
    job = await ufdl.job("read_records", {})
    assert reason(job) == "docker image 'mmclassification v1' not found"
