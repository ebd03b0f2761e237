"""The ``docker`` handler: run a job template's commands in a Docker image, no Python needed.

Each template is one TOML table in the node's settings (``[docker_templates.NAME]``)
or one drop-in file ``<docker_template_dir>/NAME.toml`` with the same keys at top
level (``template = "..."`` overrides the file name). A file may start from another:
``extends = "_base.toml"`` (a file of the same directory) takes its keys, the file's own
keys replacing them, tables merged key by key (``[parameters.body] default = [...]``
replaces only that default); a file whose name starts with ``_`` is such a base only, no
template. The shipped definitions (every stock template whose launcher runs a Docker image:
MMClassification, YOLOv5/v7, TensorFlow image classification and object detection,
MMDetection, YOLACT++, Coqui STT) are in ``handlers/docker.d`` and load by default
(``docker_template_dirs``; ``[]`` turns them off).

Keys (only ``image`` and ``commands`` are required):

- ``image``: the name of the template parameter that names a docker-image record
  (``docker_image``: pulled with the record's credentials, gated on its ``cpu``,
  driver and hardware generation), or a plain image reference.
- ``gpu`` (default true): whether the job needs a GPU slot whatever its image; with a
  docker-image record, ``false`` lets the record decide (not ``cpu``: a GPU slot).
- ``commands``: run one after the other, each in its own container; a string is
  run by ``/bin/sh -c``, a list is the argument list, ``{ parameter = "body" }`` takes
  the command from a job parameter (a list: the arguments; a text: split as a shell would),
  ``{ run = TEXT-OR-LIST, when = "param" }`` runs only when the job's parameter ``param``
  is true (set, not empty; ``unless = "param"``: only when it is not).
  ``${name}`` placeholders take the job's parameter values and ``${job_pk}``,
  ``${workspace}`` (``/workspace``), ``${num-classes}`` and ``${classes}`` (see ``labels``);
  a boolean parameter only as ``${+name:TEXT}`` or ``${-name:TEXT}`` (``ctx.expand``).
- ``env``: the containers' environment (placeholders allowed).
- ``dirs``: directories made in the work directory before the first command (the
  launcher makes ``prediction/out``, ``models``, ...; the real images refuse a missing
  output directory).
- ``mounts``: ``{"/prediction" = "prediction"}``: directories of the work directory
  mounted at other places too (the work directory itself is ``/workspace``).
- ``cache``: a container path (or a list) where the node's cache directory is mounted
  too (it is always at ``/.cache``): downloaded weights outlive the job.
- ``shm_size``: the containers' ``/dev/shm`` (``"8G"``, ``"512m"``, bytes, or
  ``"${shm_size}"`` from a parameter); the node's ``docker_shm_size_bytes`` otherwise.
- ``dataset``: ``{input = "dataset", dest = "data", options = "dataset_options"}``: the
  job's dataset (``ctx.dataset``) moved to ``dest``, a directory inside the work directory
  that must not exist yet (or be empty); after a restart (a re-attached container) a
  step done before is kept (its marker in ``.ufdl-prepared/`` is written last), one cut
  short is redone from scratch. ``options`` names a parameter (``Array<str>``, or
  ``str`` split as a shell would) or is a list: wai.annotations writer options that the
  node converts the dataset with, as the stock launcher does (any stage or option the
  node does not run fails the job with one line naming the template and the option).
  ``annotations_args`` is an older name for ``options``. ``archive = "zip"`` (or
  ``"tar.gz"``) fetches the raw files as the server's archive instead of one by one.
  ``unlabelled`` (a parameter's name, or a list such as ``["every:1"]``): the frames an
  object-detection predict takes from the dataset's videos, as the stock launcher's
  ``from-ufdl-od --unlabelled`` (``ufdl_node/work/videoframes.py``).
- ``model``: ``{input = "model", dest = "output"}``: a Predict job's model (``ctx.model``,
  a zip job output) unpacked at ``dest`` (the same rules); ``unpack = false`` takes the
  output's file as it is, ``dest`` naming the file (default ``output/model``).
- ``pretrained``: ``{parameter = "pretrained_model", dest = "models/pretrained.pth",
  config_value = "pretrained_model_config", config = "...", extract = false}``: the
  pretrained model's file (none when the parameter is null); ``${<config_value>}`` is
  `config` then, else empty. ``extract = true``: the file is a zip or tar(.gz) unpacked
  into the directory ``dest`` (a member climbing out with ``..``, an absolute name or a
  link fails the job in one line, nothing written). The file comes from ``POST
  /v1/pretrained-models/{pk}/download`` (what the UFDL Python client calls); a name the
  server has no record of fails the job in one line.
- ``values``: extra ``${name}`` values (a job parameter of the same name wins).
- ``files``: ``[{path = "output/config.py", body = "body"}]``: a file written from a
  parameter (the template's ``body``) or from ``text``, placeholders expanded.
- ``labels``: ``{file = "data/labels.txt"}`` (comma-separated) or ``labels.csv``
  (``index,label`` with a header): the values ``${classes}`` and ``${num-classes}``
  come from; ``classes = "list"`` writes them as a Python list (``['cat', 'dog']``)
  instead of ``cat,dog``.
- ``progress_regex``: as the ``command`` handler's (``step``/``total``, ``percent``...),
  matched against each ``\r``-separated piece of a container's line (a tqdm bar is one
  Docker log line of updates joined by ``\r``). With ``progress_epochs`` (a parameter
  name, e.g. ``"epochs"``, or a number) or groups ``epochs``/``last_epoch``, the regex
  reads epochs: ``epoch`` (1-based) or ``epoch0`` (0-based) and ``step``/``total`` inside
  the epoch (``ufdl_node.api.progressmatch``; mmcv's ``Epoch [3][10/25]``, YOLOv5's
  ``2/19 ... 8/25 [``).
- ``outputs``: ``[{name, type, path, zip = false, flat = false, required = true,
  compression = "stored"}]``; ``path`` is a glob in the work directory, or a list of them;
  ``zip = true`` zips what matches (the stock ``model``), ``flat = true`` under the files'
  base names. ``type`` is the output's UFDL type: a Train template's ``model`` is
  ``Model<Domain<'...'>, Framework<'...', '...'>>`` (the stock contract; the web
  front-end offers a model to a Predict job by that exact type); ``type = "Model"`` says
  so from the definition's ``domain`` and ``framework``. A zip's members are stored as
  they are (``"stored"``: weights barely compress) or compressed (``compression =
  "deflate"``: text, predictions). The zip is written in a thread.
- ``versions``, and for dry-run and the embedded server ``job_type``, ``domain``,
  ``framework``, ``inputs``, ``parameters``, ``description`` (as the ``command`` handler).

A wrong definition is one line naming its file and the key; the other templates load.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from ufdl_node.api import (
    HandlerFunc,
    HandlerSpec,
    JobContext,
    JobFailed,
    Needs,
    handler,
)
from ufdl_node.api.definitions import (
    DefinitionItem,
    check_keys,
    check_tables,
    collect_output,
    definition_handlers,
    describe,
    model_type,
    parse_size,
)
from ufdl_node.api.dockerinputs import (
    class_names,
    fetch_pretrained,
    mark_prepared,
    place_dataset,
    place_model,
    prepared,
)
from ufdl_node.api.progressmatch import EpochProgress

KEYS = {"template", "image", "gpu", "commands", "env", "mounts", "dataset", "model", "pretrained",
        "values", "files", "labels", "progress_regex", "progress_epochs", "outputs", "versions",
        "job_type", "domain", "framework", "inputs", "parameters", "description", "dirs", "cache",
        "shm_size", "predictions"}
OUTPUT_KEYS = {"name", "type", "path", "zip", "flat", "required", "compression"}
COMPRESSIONS = ("stored", "deflate")  # ufdl_node.work.archives.COMPRESSIONS
DEFAULT_COMPRESSION = "stored"
WORKSPACE = "/workspace"
INPUT_KEYS = {"dataset": {"input", "dest", "archive", "options", "annotations_args", "unlabelled"},
              "model": {"input", "dest", "unpack"},
              "pretrained": {"parameter", "dest", "config_value", "config", "extract"}}
COMMAND_KEYS = ({"parameter"}, {"run"}, {"run", "when"}, {"run", "unless"})
ARCHIVES = ("zip", "tar.gz")

# Kept under their old names: tests reach the preparation markers through this module.
_prepared, _mark_prepared = prepared, mark_prepared


def handlers(settings: Any) -> Iterator[DefinitionItem]:
    """One handler per template in ``docker_templates`` and the ``docker_template_dirs``."""
    return definition_handlers(settings, "docker", make_spec, __file__)


def make_spec(name: str, config: dict[str, Any]) -> HandlerSpec:
    """The handler spec for template `name` with `config`; ValueError when it is wrong."""
    check_keys(config, KEYS)
    if not isinstance(config.get("image"), str) or not config["image"].strip():
        raise ValueError("'image' must name a parameter or an image reference")
    _check_commands(config.get("commands"))
    check_tables(config, ("env", "mounts", "dataset", "model", "pretrained", "values", "labels",
                          "parameters", "inputs"))
    _check_inputs(config)
    _check_paths(config)
    _check_progress(config)
    config = dict(config)
    config["outputs"] = [_checked_output(config, output) for output in config.get("outputs") or []]
    for item in config.get("files") or []:
        if not isinstance(item, dict) or "path" not in item or ("body" in item) == ("text" in item):
            raise ValueError(f"each file needs path and one of body (a parameter) or text: {item!r}")
    description = describe(config, f"runs in {config['image']} (ufdl-node docker handler)")
    needs = Needs(gpu=bool(config.get("gpu", True)), docker=True)
    return handler(name, versions=config.get("versions"), needs=needs,
                   description=description, name="docker")(_runner(config))


def _check_commands(commands: Any) -> None:
    if not isinstance(commands, list) or not commands or not all(
            isinstance(c, str) or (isinstance(c, list) and c)
            or (isinstance(c, dict) and set(c) in COMMAND_KEYS) for c in commands):
        raise ValueError("'commands' must be a non-empty list of strings, argument lists, "
                         "{ parameter = NAME } or { run = COMMAND, when = NAME } tables")


def _check_paths(config: dict[str, Any]) -> None:
    """``mounts``, ``dirs``, ``cache`` and ``shm_size``, checked at load time."""
    for container_path in (config.get("mounts") or {}):
        if not str(container_path).startswith("/") or str(container_path).rstrip("/") == WORKSPACE:
            raise ValueError(f"mount {container_path!r} must be an absolute path other than {WORKSPACE}")
    dirs = config.get("dirs") or []
    if not isinstance(dirs, list) or not all(isinstance(d, str) and d and not d.startswith("/")
                                             and ".." not in PurePosixPath(d).parts for d in dirs):
        raise ValueError("'dirs' must be a list of relative directories inside the work directory")
    cache = config.get("cache") or []
    for path in [cache] if isinstance(cache, str) else cache:
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == WORKSPACE:
            raise ValueError(f"cache {path!r} must be an absolute container path other than {WORKSPACE}")
    shm = config.get("shm_size")
    if shm is not None and not (isinstance(shm, str) and "${" in shm):
        parse_size(shm, "shm_size")


def _check_progress(config: dict[str, Any]) -> None:
    if config.get("progress_regex"):
        pattern = re.compile(config["progress_regex"])  # re.error is a ValueError
        epochs = config.get("progress_epochs")
        if epochs is not None or {"epoch", "epoch0"} & set(pattern.groupindex):
            if epochs is not None and not isinstance(epochs, (str, int)):
                raise ValueError("'progress_epochs' must name a parameter or be a number")
            EpochProgress(pattern, 1 if epochs is not None else None)
    elif config.get("progress_epochs") is not None:
        raise ValueError("'progress_epochs' needs a progress_regex")


def _checked_output(config: dict[str, Any], output: Any) -> dict[str, Any]:
    if isinstance(output, dict) and "name" in output:
        check_keys(output, OUTPUT_KEYS, f"output {output['name']!r}")
    if not isinstance(output, dict) or not {"name", "type", "path"} <= set(output) \
            or set(output) - OUTPUT_KEYS:
        raise ValueError(f"each output needs name, type and path (and may say zip, flat, required, "
                         f"compression): {output!r}")
    if output.get("compression", DEFAULT_COMPRESSION) not in COMPRESSIONS:
        raise ValueError(f"output {output['name']!r}: compression must be one of "
                         f"{', '.join(COMPRESSIONS)}, not {output['compression']!r}")
    if output["type"] == "Model":
        return {**output, "type": model_type(config, f"output {output['name']!r}")}
    return dict(output)


def _check_inputs(config: dict[str, Any]) -> None:
    """The ``dataset``, ``model`` and ``pretrained`` tables and ``values``, checked at load time."""
    for key, allowed in INPUT_KEYS.items():
        if isinstance(config.get(key), dict):
            check_keys(config[key], allowed, f"'{key}'")
    dataset = config.get("dataset") or {}
    if dataset.get("archive") is not None and dataset["archive"] not in ARCHIVES:
        raise ValueError(f"dataset archive must be one of {', '.join(ARCHIVES)}, not {dataset['archive']!r}")
    if "options" in dataset and "annotations_args" in dataset:
        raise ValueError("dataset: give options or annotations_args (its older name), not both")
    args = dataset.get("options", dataset.get("annotations_args"))
    for key, value in (("options", args), ("unlabelled", dataset.get("unlabelled"))):
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(a, str) for a in value)):
            raise ValueError(f"dataset {key} must name a parameter or be a list of strings")
    if config.get("dataset") and config.get("model"):
        data = PurePosixPath(str(config["dataset"].get("dest", "data")))
        model = PurePosixPath(str(config["model"].get("dest", "output")))
        if data == model or data in model.parents or model in data.parents:
            raise ValueError(f"the dataset's dest {str(data)!r} and the model's {str(model)!r} overlap")
    reserved = {"body", "self"} & set(config.get("values") or {})  # ctx.expand's own argument names
    if reserved:
        raise ValueError(f"'values' cannot define {', '.join(sorted(reserved))}")


def _runner(config: dict[str, Any]) -> HandlerFunc:
    async def run_docker(ctx: JobContext) -> None:
        await run_configured(ctx, config)
    return run_docker


class Plan(NamedTuple):  # not a dataclass: tests load this file by path, outside sys.modules
    """What a definition runs for one job, every ``${}`` expanded: the commands (a text for
    ``/bin/sh -c`` or an argument list), the containers' environment, the files to write
    (path in the work directory, text), and the containers' ``/dev/shm`` (None: the node's)."""

    commands: list[str | list[str]]
    env: dict[str, str]
    files: list[tuple[str, str]]
    shm_size_bytes: int | None = None


async def run_configured(ctx: JobContext, config: dict[str, Any]) -> None:
    """Fetch the inputs into the work directory, run the commands in the image, upload the outputs."""
    image = await _image(ctx, config["image"])
    await place_dataset(ctx, config.get("dataset"))
    await place_model(ctx, config.get("model"))
    classes = await asyncio.to_thread(class_names, ctx, config.get("labels"))
    pretrained = await fetch_pretrained(ctx, config.get("pretrained"))
    planned = plan(ctx, config, classes=classes, pretrained=pretrained)
    binds = await asyncio.to_thread(_prepare, ctx, planned.files, config)
    progress = _progress(ctx, config)
    for command in planned.commands:
        await ctx.container(image, command, progress_regex=progress, env=planned.env, binds=binds,
                            shm_size_bytes=planned.shm_size_bytes)
    for output in config.get("outputs") or []:
        path = await collect_output(ctx, str(output["name"]), output["path"],
                                    required=bool(output.get("required", True)),
                                    zip_=bool(output.get("zip")), flat=bool(output.get("flat")),
                                    compression=str(output.get("compression", DEFAULT_COMPRESSION)))
        if path is not None:
            await ctx.upload(str(output["name"]), str(output["type"]), path)
    await _store_predictions(ctx, config)
    ctx.progress(1.0)


async def _store_predictions(ctx: JobContext, config: dict[str, Any]) -> None:
    """``predictions = {dir, format, store, clear, confidence}``: the prediction files written
    back into the dataset, as the stock predict executors do (``ctx.store_prediction_files``);
    `store`, `clear` and `confidence` name job parameters (or are literal values)."""
    spec = config.get("predictions")
    if not spec:
        return

    def value(key: str) -> Any:
        named = spec.get(key)
        return ctx.params.get(named) if isinstance(named, str) else named

    data = config.get("dataset") or {}
    await ctx.store_prediction_files(
        str(data.get("input", "dataset")), str(spec.get("dir", "prediction/out")), str(spec["format"]),
        store=bool(value("store")), clear=bool(value("clear")), confidence_scores=value("confidence"),
        roots=[str(data["dest"])] if data.get("dest") else [])


def _progress(ctx: JobContext, config: dict[str, Any]) -> Any:
    """The definition's progress pattern: its regex, or an EpochProgress over it."""
    regex = config.get("progress_regex") or None
    if regex is None:
        return None
    epochs = config.get("progress_epochs")
    if isinstance(epochs, str):
        value = ctx.params.get(epochs)
        if not isinstance(value, int) or isinstance(value, bool):
            raise JobFailed(f"progress_epochs: the job's parameter {epochs!r} is not a number of epochs")
        epochs = value
    if epochs is not None or {"epoch", "epoch0"} & set(re.compile(regex).groupindex):
        return EpochProgress(regex, epochs)
    return regex


def _prepare(ctx: JobContext, files: list[tuple[str, str]], config: dict[str, Any]) -> list[str]:
    """Write the plan's files and make the definition's directories and mounted directories
    (blocking: in a thread); the containers' binds."""
    for relative in config.get("dirs") or []:
        ctx.confined(str(relative), f"dirs {relative!r}").mkdir(parents=True, exist_ok=True)
    for relative, text in files:
        target = ctx.confined(relative, f"file {relative!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    binds = []
    for container_path, relative in (config.get("mounts") or {}).items():
        host = ctx.confined(str(relative), f"mount {container_path}")
        host.mkdir(parents=True, exist_ok=True)
        binds.append(f"{host}:{container_path}")
    cache = config.get("cache") or []
    for container_path in [cache] if isinstance(cache, str) else cache:
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        binds.append(f"{ctx.cache_dir.resolve()}:{container_path}")
    return binds


def _values(ctx: JobContext, config: dict[str, Any], classes: list[str] | None,
            pretrained: bool) -> dict[str, Any]:
    values: dict[str, Any] = {**(config.get("values") or {}), "job_pk": ctx.pk, "workspace": WORKSPACE}
    if classes is not None:
        as_list = (config.get("labels") or {}).get("classes") == "list"
        values["num-classes"] = len(classes)
        values["classes"] = str(classes) if as_list else ",".join(classes)
        labels = config.get("labels") or {}
        if labels.get("quoted"):  # YOLACT's ${labels}: 'a','b'
            values[str(labels["quoted"])] = ",".join(f"'{c}'" for c in classes)
        if labels.get("count_plus_one"):  # YOLACT's ${num-labels}: the classes and the background
            values[str(labels["count_plus_one"])] = len(classes) + 1
    if config.get("pretrained"):
        key = str(config["pretrained"].get("config_value", "pretrained_model_config"))
        values[key] = str(config["pretrained"].get("config", "")) if pretrained else ""
    return values


def plan(ctx: JobContext, config: dict[str, Any], *, classes: list[str] | None,
         pretrained: bool) -> Plan:
    """The commands, environment and files of `config` for the job of `ctx`, expanded with
    its parameters and the run's values: ``${job_pk}``, ``${workspace}``, ``values``, the
    ``labels`` (`classes`, None without ``labels``) and the ``pretrained`` config value
    (`pretrained`: whether the job names a pretrained model). JobFailed names a
    placeholder without a value."""
    values = _values(ctx, config, classes, pretrained)
    files = []
    for item in config.get("files") or []:
        body = ctx.params.get(item["body"]) if "body" in item else item["text"]
        if body is None:
            raise JobFailed(f"file {item['path']!r}: the job has no parameter {item.get('body')!r}")
        lines = _expand(ctx, body, values, f"file {item['path']}")
        text = lines if isinstance(lines, str) else "".join(f"{line}\n" for line in lines)
        files.append((str(item["path"]), text))
    env = {str(k): str(_expand(ctx, str(v), values, f"env {k}"))
           for k, v in (config.get("env") or {}).items()}
    commands: list[str | list[str]] = []
    for command in config["commands"]:
        if isinstance(command, dict) and "parameter" in command:
            command = ctx.params.get(command["parameter"])
            if isinstance(command, str):
                command = shlex.split(command)
            if not command or not isinstance(command, list):
                raise JobFailed("the job's command parameter is empty")
        elif isinstance(command, dict):
            if not _runs(ctx, command):
                continue
            command = command["run"]
        commands.append(_expand(ctx, command, values, "command"))
    shm = config.get("shm_size")
    shm_bytes = None
    if shm is not None:
        text = _expand(ctx, shm, values, "shm_size") if isinstance(shm, str) else shm
        try:
            shm_bytes = parse_size(text, "shm_size")
        except ValueError as e:
            raise JobFailed(str(e)) from None
    return Plan(commands, env, files, shm_bytes)


def _runs(ctx: JobContext, command: dict[str, Any]) -> bool:
    """Whether a ``{ run, when }`` (or ``unless``) command runs for this job's parameters."""
    if "when" in command:
        return bool(ctx.params.get(command["when"]))
    if "unless" in command:
        return not ctx.params.get(command["unless"])
    return True


async def _image(ctx: JobContext, image: str) -> str | dict[str, Any]:
    """The docker-image record the parameter `image` names, or `image` as a reference."""
    if image in ctx.params:
        return await ctx.docker_image(image)
    return image


def _expand(ctx: JobContext, body: Any, values: dict[str, Any], what: str) -> Any:
    """`body` (a text, or a list of lines/arguments) expanded by the toolkit, a failure
    naming `what` (the toolkit names every body "body")."""
    try:
        return ctx.expand(body, **values)
    except JobFailed as e:
        raise JobFailed(f"{what}: {e.reason.removeprefix('body: ')}") from None
