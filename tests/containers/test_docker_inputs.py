"""The `docker` handler's inputs: a dataset and a model placed at a definition's dest, in real
containers through the daemon on the embedded server; the shipped definitions expanded as the
handler expands them."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

from tests.conftest import StartServer, wait_for
from tests.daemon.conftest import ADMIN_PW, Daemon, node_settings, server_settings
from tests.handlers.images import image_folder
from ufdl_node.api import HandlerSpec, JobContext, JobFailed, PluginError
from ufdl_node.api.definitions import load_definition
from ufdl_node.cli.localdata import upload_dataset
from ufdl_node.client import UfdlClient
from ufdl_node.containers.engine import ContainerEngine
from ufdl_node.errors import ConfigError
from ufdl_node.logs import get_logger
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import SHIPPED_HANDLERS_DIR
from ufdl_node.work.wai_options import split_schedule

from .conftest import TEST_IMAGE, TEST_NODE

SESSION_LABEL = "org.ufdl.node.test-session"
DATASET_TYPE = "PK<Dataset<Domain<'Image Classification'>>>"
MODEL_TYPE = "JobOutput<Model<Domain<'Image Classification'>, Framework<'busybox', '1'>>>"
IMAGE_TYPE = "PK<DockerImage<Domain<'Image Classification'>, Framework<'busybox', '1'>>>"
PRETRAINED_TYPE = "PK<PretrainedModel<Domain<'Image Classification'>, Framework<'busybox', '1'>>>"
HEADER = """
job_type = "{job_type}"
domain = "Image Classification"
framework = "busybox:1"
gpu = false
"""
LIST_IN_DATA = " && ".join([
    "mkdir -p /workspace/out", "cd /workspace/data/in", "find . -type f | sort > /workspace/out/listing.txt"])
LIST_MODEL_AND_DATA = " && ".join([
    "OUT=/workspace/prediction/out", "mkdir -p $OUT", "cd /workspace/output",
    "find . -type f | sort > $OUT/model.txt", "cp listing.txt $OUT/", "cd /workspace/prediction/in",
    "find . -type f | sort > $OUT/in.txt"])
# The dataset as the server's zip (raw files), at a dest two levels down; the listing comes
# back as the listing output and, zipped, as the model.
LIST_DATASET = HEADER.format(job_type="Train") + f"""
inputs = {{ dataset = "{DATASET_TYPE}" }}
image = "{TEST_IMAGE}"
dataset = {{ input = "dataset", dest = "data/in", archive = "zip", options = "dataset_options" }}
commands = [{json.dumps(LIST_IN_DATA)}]
outputs = [{{ name = "listing", type = "Blob", path = "out/listing.txt" }},
           {{ name = "model", type = "Blob", path = "out", zip = true }}]

[parameters.dataset_options]
types = ["Array<str>"]
default = ["to-images-ic", "-o", "."]  # the node converts: bare images at the top level
"""
# The shipped MMClassification train definition's dataset step (its `dataset`, `labels` and
# `dataset_options`, checked equal below), with a busybox command that lists what it placed.
MMCLS_TRAIN_TOML = SHIPPED_HANDLERS_DIR / "docker.d" / "mmclassification_0.25.0_resnet18_train.toml"
SHIPPED_MMCLS = load_definition(MMCLS_TRAIN_TOML)
LIST_MMCLS = " && ".join([
    "mkdir -p /workspace/out", "cd /workspace/data", "find . -type f | sort > /workspace/out/listing.txt",
    'echo "$MMCLS_CLASSES" > /workspace/out/classes.txt'])
MMCLS_DATASET = HEADER.format(job_type="Train") + f"""
inputs = {{ dataset = "{DATASET_TYPE}" }}
image = "{TEST_IMAGE}"
dataset = {{ input = "dataset", dest = "data", options = "dataset_options" }}
labels = {{ file = "data/labels.txt" }}
env = {{ MMCLS_CLASSES = "${{classes}}" }}
commands = [{json.dumps(LIST_MMCLS)}]
outputs = [{{ name = "listing", type = "Blob", path = "out/listing.txt" }},
           {{ name = "classes", type = "Blob", path = "out/classes.txt" }}]

[parameters.dataset_options]
types = ["Array<str>", "str"]
default = {json.dumps(SHIPPED_MMCLS["parameters"]["dataset_options"]["default"])}
"""
# Predict-style: the model (a zip job output) unpacked at output/, the dataset's files (the
# default: one by one through the node's cache) at prediction/in, the image from a record.
LIST_MODEL = HEADER.format(job_type="Predict") + f"""
inputs = {{ dataset = "{DATASET_TYPE}", model = "{MODEL_TYPE}" }}
image = "docker_image"
model = {{ input = "model", dest = "output" }}
dataset = {{ input = "dataset", dest = "prediction/in" }}
commands = [["sh", "-c", {json.dumps(LIST_MODEL_AND_DATA)}]]
[[outputs]]
name = "predictions"
type = "Blob"
path = "prediction/out/*.txt"
zip = true
compression = "deflate"

[parameters.docker_image]
types = ["{IMAGE_TYPE}"]
"""
PRETRAINED = HEADER.format(job_type="Export") + f"""
image = "{TEST_IMAGE}"
pretrained = {{ parameter = "pretrained_model", dest = "models/pretrained.pth" }}
commands = ["ls -l /workspace/models"]

[parameters.pretrained_model]
types = ["{PRETRAINED_TYPE}"]
"""
ESCAPE = HEADER.format(job_type="Train") + f"""
inputs = {{ dataset = "{DATASET_TYPE}" }}
image = "{TEST_IMAGE}"
dataset = {{ input = "dataset", dest = "../escaped" }}
commands = ["true"]
"""
DEFINITIONS = {"docker_list_dataset": LIST_DATASET, "docker_list_model": LIST_MODEL,
               "docker_pretrained": PRETRAINED, "docker_escape": ESCAPE,
               "docker_mmcls_dataset": MMCLS_DATASET}
LABELS = {"cat": 2, "dog": 3}
FILES = sorted(f"./{label}{i}.png" for label, count in LABELS.items() for i in range(count))


class Inputs:
    """The embedded server with the definitions imported, an admin client, and a node's settings."""

    def __init__(self, server: EmbeddedServer, admin: UfdlClient, tmp_path: Path) -> None:
        self.server = server
        self.admin = admin
        self.tmp_path = tmp_path
        self.templates = tmp_path / "docker.d"
        self.templates.mkdir()
        for name, text in DEFINITIONS.items():
            (self.templates / f"{name}.toml").write_text(text)
        self.settings = node_settings(
            server, tmp_path, handler_dirs=[SHIPPED_HANDLERS_DIR], docker_template_dirs=[self.templates],
            docker_labels={SESSION_LABEL: TEST_NODE}, docker_shm_size_bytes=64 * 2**20)
        self.registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=self.settings)
        self.template_pks: dict[str, int] = {}

    async def import_templates(self) -> None:
        for name in DEFINITIONS:
            spec = self.registry.for_template(name, 1)
            assert spec is not None and spec.description is not None, self.registry.problems
            await self.admin.import_template(spec.description.import_spec(name))
            found = await self.admin.list_templates(
                {"expressions": [{"type": "exact", "field": "name", "value": name}]})
            self.template_pks[name] = int(found[0]["pk"])

    async def dataset(self) -> dict[str, Any]:
        """A new image-classification dataset (cat0.png ... dog2.png) made through the server's API."""
        folder = image_folder(self.tmp_path / f"images-{len(self.template_pks)}", LABELS)
        return await upload_dataset(self.admin, folder, domain="ic", name="pets")

    async def run(self, template: str, inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Create a job, run a node until the job has ended, and return it as it ended."""
        job = await self.admin.create_job(self.template_pks[template], inputs, params)
        # Not exit_when_idle: a job's docker-image record is read in the background first,
        # and a node that sees no work it can take meanwhile would leave.
        daemon = Daemon(self.settings, self.registry)
        try:
            async def ended() -> dict[str, Any] | None:
                got = await self.admin.get_job(int(job["pk"]))
                return got if phase(got) in ("FINISHED", "ERRORED") else None

            return await wait_for(ended, timeout_s=60, interval_s=0.1, what="the job to end")
        finally:
            assert await daemon.stop() == 0

    async def output(self, job: dict[str, Any], name: str) -> bytes:
        dest = self.tmp_path / f"out-{job['pk']}-{name}"
        await self.admin.download_output(int(job["pk"]), name, "Blob", dest)
        return dest.read_bytes()

    async def record(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = await self.admin.request("POST", path, json=body)
        return reply


def _finished(job: dict[str, Any]) -> None:
    assert phase(job) == "FINISHED", job["error_reason"]


def _errored(job: dict[str, Any]) -> str:
    assert phase(job) == "ERRORED", job
    reason = str(job["error_reason"])
    assert "\n" not in reason
    return reason


@pytest.fixture
async def inputs(engine: ContainerEngine, embedded_servers: StartServer,
                 tmp_path: Path) -> AsyncIterator[Inputs]:
    """Docker present (else skip), an embedded server with this module's definitions imported."""
    server = await embedded_servers(server_settings(tmp_path / "server"))
    async with UfdlClient(server.url, "admin", ADMIN_PW, retry_max_attempts=2,
                          retry_max_delay_s=0.2) as admin:
        h = Inputs(server, admin, tmp_path)
        await h.import_templates()
        yield h
    for run in await engine.find({SESSION_LABEL: TEST_NODE}):
        await run.remove()


async def test_dataset_archive_lands_at_dest_with_exactly_its_files(inputs: Inputs) -> None:
    """A dataset fetched as the server's zip and converted by the node (to-images-ic -o .) sits at
    the definition's dest: the container lists its files."""
    dataset = await inputs.dataset()

    job = await inputs.run("docker_list_dataset", {"dataset": {"value": dataset["pk"], "type": DATASET_TYPE}},
                           {})

    _finished(job)
    assert (await inputs.output(job, "listing")).decode().splitlines() == FILES
    # the archive, not the files one by one: nothing went through the node's file cache
    assert not (inputs.settings.cache_dir / "datasets" / "sha256").exists()


async def test_the_mmclassification_dataset_step_converts_on_the_node(inputs: Inputs) -> None:
    """The shipped MMClassification train definition's dataset step: the node fetches the raw files
    one by one (no archive, so no server conversion) and writes labels.txt and
    train|test|val/<label>/ itself; ${classes} comes from that labels.txt."""
    assert {k: SHIPPED_MMCLS[k] for k in ("dataset", "labels", "env")} == \
        {k: tomllib.loads(MMCLS_DATASET)[k] for k in ("dataset", "labels", "env")}
    dataset = await inputs.dataset()

    job = await inputs.run("docker_mmcls_dataset",
                           {"dataset": {"value": dataset["pk"], "type": DATASET_TYPE}}, {})

    _finished(job)
    names = sorted(f.removeprefix("./") for f in FILES)
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    expected = sorted([f"./{cycle[i]}/{name[:3]}/{name}" for i, name in enumerate(names)]
                      + ["./labels.txt"])
    assert (await inputs.output(job, "listing")).decode().splitlines() == expected
    assert (await inputs.output(job, "classes")).decode().strip() == "cat,dog"
    blobs = [p for p in (inputs.settings.cache_dir / "datasets" / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == len(FILES)  # the raw files, each fetched into the node's cache


async def test_options_the_node_does_not_run_fail_the_job_in_one_line(inputs: Inputs) -> None:
    """dataset_options with the yolov5 (object-detection) writer on the MMClassification dataset
    step: ERRORED naming the template, the step, the stage and the writers that fit the dataset;
    no file of the dataset fetched."""
    dataset = await inputs.dataset()

    job = await inputs.run("docker_mmcls_dataset",
                           {"dataset": {"value": dataset["pk"], "type": DATASET_TYPE}},
                           {"dataset_options": {"value": ["to-yolo-od", "-o", "."], "type": "Array<str>"}})

    assert _errored(job) == ("template 'docker_mmcls_dataset', dataset step: dataset_options: stage "
                             "'to-yolo-od' writes another domain than the dataset's (Image "
                             "Classification); the node writes to-subdir-ic, to-images-ic for it")
    assert not (inputs.settings.cache_dir / "datasets" / "sha256").exists()


async def test_predict_model_output_is_unpacked_at_dest_beside_the_dataset(inputs: Inputs) -> None:
    """A previous job's zip output as a Predict job's model: unpacked at its dest; the dataset at its own.
    The model zip's members are stored (the default), the predictions' deflated (as declared)."""
    dataset = await inputs.dataset()
    dataset_input = {"dataset": {"value": dataset["pk"], "type": DATASET_TYPE}}
    trained = await inputs.run("docker_list_dataset", dataset_input, {})
    _finished(trained)
    [model] = [o for o in trained["outputs"] if o["name"] == "model"]
    image = await inputs.record("/v1/docker/create", {
        "name": "busybox", "version": "1", "url": TEST_IMAGE, "cuda_version": "11.1",
        "framework": {"name": "busybox", "version": "1"}, "domain": "ic", "tasks": ["Predict"],
        "min_hardware_generation": None, "cpu": True, "licence": "Apache 2.0"})

    job = await inputs.run("docker_list_model", {**dataset_input, "model": {"value": model["pk"],
                                                                             "type": MODEL_TYPE}},
                           {"docker_image": {"value": image["pk"], "type": IMAGE_TYPE}})

    _finished(job)
    model_zip = inputs.tmp_path / "model.zip"
    model_zip.write_bytes(await inputs.output(trained, "model"))
    with zipfile.ZipFile(model_zip) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    predictions = inputs.tmp_path / "predictions.zip"
    predictions.write_bytes(await inputs.output(job, "predictions"))
    with zipfile.ZipFile(predictions) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
        assert zf.read("model.txt").decode().splitlines() == ["./listing.txt"]
        assert zf.read("listing.txt").decode().splitlines() == FILES
        assert zf.read("in.txt").decode().splitlines() == FILES


async def test_pretrained_model_the_server_has_no_file_for_fails_the_job_in_one_line(
        inputs: Inputs) -> None:
    """The embedded server keeps no pretrained-model files: ERRORED naming the model and the call."""
    record = await inputs.record("/v1/pretrained-models/create", {
        "name": "resnet18", "description": "resnet18 on ImageNet", "url": "https://example.org/r18.pth",
        "metadata": {}, "framework": {"name": "busybox", "version": "1"}, "domain": "ic",
        "licence": "Apache 2.0"})

    job = await inputs.run("docker_pretrained", {},
                           {"pretrained_model": {"value": record["pk"], "type": PRETRAINED_TYPE}})

    reason = _errored(job)
    assert reason.startswith("pretrained model resnet18: the server gave no file for it"), reason
    assert f"POST /v1/pretrained-models/{record['pk']}/download: HTTP 404" in reason


async def test_dataset_dest_outside_the_work_directory_fails_the_job(inputs: Inputs, tmp_path: Path) -> None:
    """A dest of '../escaped' fails the job with one line; nothing is written beside the work directory."""
    dataset = await inputs.dataset()

    job = await inputs.run("docker_escape", {"dataset": {"value": dataset["pk"], "type": DATASET_TYPE}}, {})

    assert "dataset dest: ../escaped is outside the job's work and cache directories" in _errored(job)
    assert not [p for p in tmp_path.rglob("escaped")]


# -- definitions checked when they load --------------------------------------------------------------


def _problem(tmp_path: Path, text: str) -> str:
    (tmp_path / "bad.toml").write_text(text)
    [problem] = _docker_module().handlers(SimpleNamespace(docker_template_dirs=[tmp_path]))
    assert isinstance(problem, PluginError), problem
    return str(problem)


def test_unknown_key_in_the_dataset_table_is_a_settings_error(tmp_path: Path) -> None:
    """A typo inside `dataset` is an error at start (not a template left out), naming the file, the
    table and the key."""
    (tmp_path / "bad.toml").write_text('image = "x"\ncommands = ["true"]\ndataset = { dets = "data" }\n')
    [problem] = _docker_module().handlers(SimpleNamespace(docker_template_dirs=[tmp_path]))
    assert isinstance(problem, ConfigError), problem
    assert str(problem) == f"{tmp_path / 'bad.toml'}: docker template 'bad': 'dataset': unknown key 'dets' " \
        "(known: annotations_args, archive, dest, input, options, unlabelled)"


def test_options_and_their_older_name_together_are_refused_at_load(tmp_path: Path) -> None:
    """options and annotations_args (their older name) in one dataset table: the definition does not load."""
    problem = _problem(tmp_path, 'image = "x"\ncommands = ["true"]\ndataset = { options = ["to-subdir-ic"], '
                                 'annotations_args = ["to-subdir-ic"] }\n')
    assert problem.endswith("dataset: give options or annotations_args (its older name), not both")


def test_options_load_without_an_archive(tmp_path: Path) -> None:
    """The node converts: options need no archive (they did when the server was asked to convert)."""
    (tmp_path / "ok.toml").write_text('image = "x"\ncommands = ["true"]\n'
                                      'dataset = { annotations_args = ["to-subdir-ic"] }\n')
    [spec] = _docker_module().handlers(SimpleNamespace(docker_template_dirs=[tmp_path]))
    assert isinstance(spec, HandlerSpec), spec


def test_dataset_and_model_dests_that_overlap_are_refused_at_load(tmp_path: Path) -> None:
    """A model unpacked inside the dataset's dest would collide with it: the definition does not load."""
    problem = _problem(tmp_path, 'image = "x"\ncommands = ["true"]\ndataset = { dest = "in" }\n'
                                 'model = { dest = "in/model" }\n')
    assert problem.endswith("the dataset's dest 'in' and the model's 'in/model' overlap")


# -- the shipped definitions, expanded by the handler's own code ------------------------------------------


def _docker_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_handler_inputs", SHIPPED_HANDLERS_DIR / "docker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NoIO:
    """A JobIO for a context that only expands: any call to the server is a test failure."""

    def report_progress(self, amount: float, data: dict[str, Any]) -> None:
        raise AssertionError("progress while expanding")

    async def upload(self, name: str, type_: str, path: Path) -> None:
        raise AssertionError("upload while expanding")

    async def download(self, path: str, dest: Path) -> Path:
        raise AssertionError("download while expanding")

    def write_log(self, line: str) -> None:
        pass


def _context(spec: HandlerSpec, name: str, tmp_path: Path) -> JobContext:
    """A job of template `name` that sets only the parameters without a default."""
    assert spec.description is not None
    declared = spec.description.template_parameters()
    def value(types: list[str]) -> object:  # a value of the parameter's first declared type
        return None if "Nothing" in types else ["x"] if types[0].startswith("Array<") else "x"

    given = {p: {"value": value(d["types"]), "type": d["types"][0]}
             for p, d in declared.items() if "default" not in d}
    job = {"pk": 41, "template": {"pk": 1, "name": name, "version": 1}, "input_values": {},
           "parameter_values": given}
    return JobContext(job=job, template={"pk": 1, "name": name, "version": 1, "parameters": declared},
                      spec=spec, work_dir=tmp_path / "work", cache_dir=tmp_path / "cache", io=_NoIO(),
                      cancel_event=asyncio.Event(), logger=get_logger("test"))


SHIPPED = sorted(p for p in (SHIPPED_HANDLERS_DIR / "docker.d").glob("*.toml") if not p.name.startswith("_"))


@pytest.mark.parametrize("pretrained", [True, False], ids=["pretrained", "no-pretrained"])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_definition_expands_with_the_templates_defaults(path: Path, pretrained: bool,
                                                                 tmp_path: Path) -> None:
    """Each shipped definition loads, and the handler's plan expands every ${} with the defaults."""
    module = _docker_module()
    config = load_definition(path)
    settings = SimpleNamespace(docker_template_dirs=[], docker_templates={path.stem: config})
    [spec] = list(module.handlers(settings))
    assert isinstance(spec, HandlerSpec), spec
    ctx = _context(spec, path.stem, tmp_path)

    planned = module.plan(ctx, config, classes=["cat", "dog"] if config.get("labels") else None,
                          pretrained=pretrained)

    texts = json.dumps([planned.commands, planned.env, planned.files])
    for name, value in (config.get("values") or {}).items():  # kept for the container to fill in
        if value == f"${{{name}}}":
            texts = texts.replace(value, "")
    assert "${" not in texts, texts

    def runs(command: object) -> bool:  # { run, when/unless }: as the parameter's default says
        if not isinstance(command, dict) or not ({"when", "unless"} & set(command)):
            return True
        key = "when" if "when" in command else "unless"
        default = bool(config["parameters"][command[key]].get("default", False))
        return default if key == "when" else not default

    assert len(planned.commands) == sum(map(runs, config["commands"]))
    assert [f for f, _ in planned.files] == [f["path"] for f in config.get("files", [])]


def test_placeholder_without_a_value_names_where_it_is(tmp_path: Path) -> None:
    """A command's ${nope} fails the job with one line naming the command and the placeholder."""
    config = {"image": "x", "commands": [["echo", "${job_pk}", "${nope}"]], "env": {"A": "${workspace}"}}
    [spec] = list(_docker_module().handlers(SimpleNamespace(docker_template_dirs=[],
                                                            docker_templates={"t": config})))
    assert isinstance(spec, HandlerSpec), spec

    with pytest.raises(JobFailed) as info:
        _docker_module().plan(_context(spec, "t", tmp_path), config, classes=None, pretrained=False)

    assert info.value.reason == "command: no value for ${nope}"


def test_an_output_compression_other_than_stored_or_deflate_is_refused_at_load(tmp_path: Path) -> None:
    """A zipped output's compression is "stored" (the default) or "deflate"; a typo does not load."""
    problem = _problem(tmp_path, 'image = "x"\ncommands = ["true"]\noutputs = [{ name = "model", '
                                 'type = "Blob", path = "out", zip = true, compression = "zstd" }]\n')
    assert problem.endswith("output 'model': compression must be one of stored, deflate, not 'zstd'")
