"""The ``docker`` handler: run a job template's commands in a Docker image, no Python needed.

Each template is one TOML table in the node's settings (``[docker_templates.NAME]``)
or one drop-in file ``<docker_template_dir>/NAME.toml`` with the same keys at top
level (``template = "..."`` overrides the file name). Shipped definitions for the
stock MMClassification 0.25.0 and YOLOv5 templates are in ``handlers/docker.d``.

Keys (only ``image`` and ``commands`` are required):

- ``image``: the name of the template parameter that names a docker-image record
  (``docker_image``: pulled with the record's credentials, gated on its ``cpu``,
  driver and hardware generation), or a plain image reference.
- ``gpu`` (default true): whether the job needs a GPU slot whatever its image; with a
  docker-image record, ``false`` lets the record decide (not ``cpu``: a GPU slot).
- ``commands``: run one after the other, each in its own container; a string is
  run by ``/bin/sh -c``, a list is the argument list, ``{ parameter = "body" }`` takes
  the command from a job parameter (a list: the arguments; a text: split as a shell would).
  ``${name}`` placeholders take the job's parameter values and ``${job_pk}``,
  ``${workspace}`` (``/workspace``), ``${num-classes}`` and ``${classes}`` (see ``labels``);
  a boolean parameter only as ``${+name:TEXT}`` or ``${-name:TEXT}`` (``ctx.expand``).
- ``env``: the containers' environment (placeholders allowed).
- ``mounts``: ``{"/prediction" = "prediction"}``: directories of the work directory
  mounted at other places too (the work directory itself is ``/workspace``).
- ``dataset``: ``{input = "dataset", dest = "data", options = "dataset_options"}``: the
  job's dataset (``ctx.dataset``) moved to ``dest``, a directory inside the work directory
  that must not exist yet (or be empty); after a restart (a re-attached container) a
  step done before is kept (its marker in ``.ufdl-prepared/`` is written last), one cut
  short is redone from scratch. ``options`` names a parameter (``Array<str>``, or
  ``str`` split as a shell would) or is a list: wai.annotations writer options that the
  node converts the dataset with, as the stock launcher does (``write-labels``,
  ``to-subdir-ic`` with splits, ``to-images-ic``; any other stage or option fails the job
  with one line naming the template and the option). ``annotations_args`` is an older
  name for ``options``. ``archive = "zip"`` (or ``"tar.gz"``) fetches the raw files as
  the server's archive instead of one by one through the node's cache.
- ``model``: ``{input = "model", dest = "output"}``: a Predict job's model (``ctx.model``,
  a zip job output) unpacked at ``dest`` (the same rules).
- ``pretrained``: ``{parameter = "pretrained_model", dest = "models/pretrained.pth",
  config_value = "pretrained_model_config", config = "..."}``: the pretrained model's
  file (none when the parameter is null); ``${<config_value>}`` is `config` then, else empty.
  The file comes from ``POST /v1/pretrained-models/{pk}/download`` (what the UFDL Python
  client calls; the embedded server has no such file, so there the job fails saying so).
- ``values``: extra ``${name}`` values (a job parameter of the same name wins).
- ``files``: ``[{path = "output/config.py", body = "body"}]``: a file written from a
  parameter (the template's ``body``) or from ``text``, placeholders expanded.
- ``labels``: ``{file = "data/labels.txt"}`` (comma-separated) or ``labels.csv``
  (``index,label`` with a header): where ``${classes}`` come from; ``classes = "list"``
  writes them as a Python list (``['cat', 'dog']``) instead of ``cat,dog``.
- ``progress_regex``: as the ``command`` handler's (``step``/``total``, ``percent``...).
- ``outputs``: ``[{name, type, path, zip = false, flat = false, required = true,
  compression = "stored"}]``; ``path`` is a glob in the work directory, or a list of them;
  ``zip = true`` zips what matches (the stock ``model``), ``flat = true`` under the files'
  base names. A zip's members are stored as they are (``"stored"``: weights barely
  compress, and deflating a GiB model costs ten times the disk's time) or compressed
  (``compression = "deflate"``: text, predictions). The zip is written in a thread.
- ``versions``, and for dry-run and the embedded server ``job_type``, ``domain``,
  ``framework``, ``inputs``, ``parameters``, ``description`` (as the ``command`` handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from ufdl_node.api import (
    HandlerFunc,
    HandlerSpec,
    JobContext,
    JobFailed,
    Needs,
    RefusedError,
    handler,
)
from ufdl_node.api.definitions import (
    DefinitionItem,
    check_keys,
    check_tables,
    collect_output,
    definition_handlers,
    describe,
)

KEYS = {"template", "image", "gpu", "commands", "env", "mounts", "dataset", "model", "pretrained",
        "values", "files", "labels", "progress_regex", "outputs", "versions", "job_type", "domain",
        "framework", "inputs", "parameters", "description"}
OUTPUT_KEYS = {"name", "type", "path", "zip", "flat", "required", "compression"}
COMPRESSIONS = ("stored", "deflate")  # ufdl_node.work.archives.COMPRESSIONS
DEFAULT_COMPRESSION = "stored"
WORKSPACE = "/workspace"
INPUT_KEYS = {"dataset": {"input", "dest", "archive", "options", "annotations_args"},
              "model": {"input", "dest"},
              "pretrained": {"parameter", "dest", "config_value", "config"}}
ARCHIVES = ("zip", "tar.gz")


def handlers(settings: Any) -> Iterator[DefinitionItem]:
    """One handler per template in ``docker_templates`` and the ``docker_template_dirs``."""
    return definition_handlers(settings, "docker", make_spec, __file__)


def make_spec(name: str, config: dict[str, Any]) -> HandlerSpec:
    """The handler spec for template `name` with `config`; ValueError when it is wrong."""
    check_keys(config, KEYS)
    if not isinstance(config.get("image"), str) or not config["image"].strip():
        raise ValueError("'image' must name a parameter or an image reference")
    commands = config.get("commands")
    if not isinstance(commands, list) or not commands or not all(
            isinstance(c, str) or (isinstance(c, list) and c)
            or (isinstance(c, dict) and set(c) == {"parameter"}) for c in commands):
        raise ValueError("'commands' must be a non-empty list of strings, argument lists or "
                         "{ parameter = NAME } tables")
    check_tables(config, ("env", "mounts", "dataset", "model", "pretrained", "values", "labels",
                          "parameters", "inputs"))
    _check_inputs(config)
    for container_path in (config.get("mounts") or {}):
        if not str(container_path).startswith("/") or str(container_path).rstrip("/") == WORKSPACE:
            raise ValueError(f"mount {container_path!r} must be an absolute path other than {WORKSPACE}")
    if config.get("progress_regex"):
        re.compile(config["progress_regex"])  # re.error is a ValueError
    for output in config.get("outputs") or []:
        if isinstance(output, dict) and "name" in output:
            check_keys(output, OUTPUT_KEYS, f"output {output['name']!r}")
        if not isinstance(output, dict) or not {"name", "type", "path"} <= set(output):
            raise ValueError(f"each output needs name, type and path (and may say zip, flat, required, "
                             f"compression): {output!r}")
        if output.get("compression", DEFAULT_COMPRESSION) not in COMPRESSIONS:
            raise ValueError(f"output {output['name']!r}: compression must be one of "
                             f"{', '.join(COMPRESSIONS)}, not {output['compression']!r}")
    for item in config.get("files") or []:
        if not isinstance(item, dict) or "path" not in item or ("body" in item) == ("text" in item):
            raise ValueError(f"each file needs path and one of body (a parameter) or text: {item!r}")
    description = describe(config, f"runs in {config['image']} (ufdl-node docker handler)")
    needs = Needs(gpu=bool(config.get("gpu", True)), docker=True)
    return handler(name, versions=config.get("versions"), needs=needs,
                   description=description, name="docker")(_runner(dict(config)))


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
    if args is not None and not isinstance(args, str) and not (
            isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise ValueError("dataset options must name a parameter or be a list of strings")
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
    ``/bin/sh -c`` or an argument list), the containers' environment, and the files to write
    (path in the work directory, text)."""

    commands: list[str | list[str]]
    env: dict[str, str]
    files: list[tuple[str, str]]


async def run_configured(ctx: JobContext, config: dict[str, Any]) -> None:
    """Fetch the inputs into the work directory, run the commands in the image, upload the outputs."""
    image = await _image(ctx, config["image"])
    await _place_dataset(ctx, config.get("dataset"))
    await _place_model(ctx, config.get("model"))
    classes = await asyncio.to_thread(_class_names, ctx, config.get("labels"))
    pretrained = await _pretrained(ctx, config.get("pretrained"))
    planned = plan(ctx, config, classes=classes, pretrained=pretrained)
    binds = await asyncio.to_thread(_prepare, ctx, planned.files, config.get("mounts") or {})
    for command in planned.commands:
        await ctx.container(image, command, progress_regex=config.get("progress_regex") or None,
                            env=planned.env, binds=binds)
    for output in config.get("outputs") or []:
        path = await collect_output(ctx, str(output["name"]), output["path"],
                                    required=bool(output.get("required", True)),
                                    zip_=bool(output.get("zip")), flat=bool(output.get("flat")),
                                    compression=str(output.get("compression", DEFAULT_COMPRESSION)))
        if path is not None:
            await ctx.upload(str(output["name"]), str(output["type"]), path)
    ctx.progress(1.0)


def _prepare(ctx: JobContext, files: list[tuple[str, str]], mounts: dict[str, Any]) -> list[str]:
    """Write the plan's files and make the mounted directories (blocking: in a thread); the
    containers' binds."""
    for relative, text in files:
        target = ctx.confined(relative, f"file {relative!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    binds = []
    for container_path, relative in mounts.items():
        host = ctx.confined(str(relative), f"mount {container_path}")
        host.mkdir(parents=True, exist_ok=True)
        binds.append(f"{host}:{container_path}")
    return binds


def plan(ctx: JobContext, config: dict[str, Any], *, classes: list[str] | None,
         pretrained: bool) -> Plan:
    """The commands, environment and files of `config` for the job of `ctx`, expanded with
    its parameters and the run's values: ``${job_pk}``, ``${workspace}``, ``values``, the
    ``labels`` (`classes`, None without ``labels``) and the ``pretrained`` config value
    (`pretrained`: whether the job names a pretrained model). JobFailed names a
    placeholder without a value."""
    values: dict[str, Any] = {**(config.get("values") or {}), "job_pk": ctx.pk, "workspace": WORKSPACE}
    if classes is not None:
        as_list = (config.get("labels") or {}).get("classes") == "list"
        values["num-classes"] = len(classes)
        values["classes"] = str(classes) if as_list else ",".join(classes)
    if config.get("pretrained"):
        key = str(config["pretrained"].get("config_value", "pretrained_model_config"))
        values[key] = str(config["pretrained"].get("config", "")) if pretrained else ""
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
        if isinstance(command, dict):
            command = ctx.params.get(command["parameter"])
            if isinstance(command, str):
                command = shlex.split(command)
            if not command or not isinstance(command, list):
                raise JobFailed("the job's command parameter is empty")
        commands.append(_expand(ctx, command, values, "command"))
    return Plan(commands, env, files)


async def _image(ctx: JobContext, image: str) -> str | dict[str, Any]:
    """The docker-image record the parameter `image` names, or `image` as a reference."""
    if image in ctx.params:
        return await ctx.docker_image(image)
    return image


def _dest(ctx: JobContext, table: dict[str, Any], default: str, what: str) -> Path:
    """Where `table` (a ``dataset`` or ``model``) puts its input: in the work directory, not it."""
    relative = str(table.get("dest", default))
    dest = ctx.confined(relative, f"{what} dest")
    work_dir = ctx.work_dir.resolve()
    if dest == work_dir or not dest.is_relative_to(work_dir):
        raise JobFailed(f"{what} dest {relative!r} must be a directory inside the work directory")
    return dest


def _move(ctx: JobContext, source: Path, dest: Path, what: str) -> None:
    """Put the directory `source` at `dest` (one rename: no copy of the files)."""
    if source.resolve() == dest:
        return
    # Out of the way first, so that a dest inside the toolkit's directory is no trap.
    aside = Path(tempfile.mkdtemp(prefix=".input-", dir=ctx.work_dir)) / "files"
    source.rename(aside)
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    if dest.exists() or dest.is_symlink():
        raise JobFailed(f"{what} dest {dest.relative_to(ctx.work_dir.resolve())} already exists "
                        f"in the work directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    aside.rename(dest)
    aside.parent.rmdir()


PREPARED_DIR = ".ufdl-prepared"  # in the work directory: one marker per preparation step done


def _marker(ctx: JobContext, what: str) -> Path:
    return ctx.work_dir / PREPARED_DIR / what


async def _prepared(ctx: JobContext, dest: Path, what: str) -> bool:
    """Whether the `what` step (``dataset``, ``model``) is done in this work directory: a
    handler run again after a restart (its container re-attached) finds it kept there.

    The marker is written last, after the input is whole at `dest`: a kept `dest` without
    it is a step cut short, removed to be redone from scratch."""
    marker = _marker(ctx, what)
    if marker.is_file() and marker.read_text(encoding="utf-8") == str(dest) and dest.is_dir():
        ctx.log.info(f"{what} kept from before the restart",
                     dest=str(dest.relative_to(ctx.work_dir.resolve())))
        return True
    marker.unlink(missing_ok=True)
    if dest.is_dir() and not dest.is_symlink():
        await asyncio.to_thread(shutil.rmtree, dest)
    return False


def _mark_prepared(ctx: JobContext, dest: Path, what: str) -> None:
    marker = _marker(ctx, what)
    marker.parent.mkdir(exist_ok=True)
    part = marker.with_name(f".{what}.part")
    part.write_text(str(dest), encoding="utf-8")
    part.replace(marker)


def _remove_file(path: Path) -> None:
    """Remove `path` and then its directory if that is empty (a GiB file takes a while)."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


async def _place_dataset(ctx: JobContext, table: dict[str, Any] | None) -> None:
    """The job's dataset, converted on the node when the definition gives options, at its dest."""
    if not table:
        return
    name = str(table.get("input", "dataset"))
    dest = _dest(ctx, table, "data", "dataset")
    if await _prepared(ctx, dest, "dataset"):
        return
    args = table.get("options", table.get("annotations_args"))
    options_name = "dataset options"
    if isinstance(args, str):  # the name of a parameter (Array<str>, or str split as a shell would)
        if args not in ctx.params:
            raise JobFailed(f"dataset: options name the parameter {args!r}, which the job lacks")
        options_name = args
        args = ctx.params[args]
        args = shlex.split(args) if isinstance(args, str) else args
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise JobFailed(f"dataset: {options_name} must be strings, not {args!r}")
    fetched = await ctx.dataset(name, options=args or None, options_name=options_name,
                                archive=table.get("archive"))
    await asyncio.to_thread(_move, ctx, fetched.directory, dest, "dataset")
    _mark_prepared(ctx, dest, "dataset")
    ctx.log.info("dataset placed", dataset=fetched.pk, dest=str(table.get("dest", "data")),
                 files=len(fetched.files), archive=table.get("archive"), options=args or None)


async def _place_model(ctx: JobContext, table: dict[str, Any] | None) -> None:
    """A Predict job's model (a zip job output), unpacked at its dest."""
    if not table:
        return
    name = str(table.get("input", "model"))
    dest = _dest(ctx, table, "output", "model")
    if await _prepared(ctx, dest, "model"):
        return
    fetched = await ctx.model(name)
    if fetched.directory is None:  # pragma: no cover - unpack=True always gives one
        raise JobFailed(f"model: input {name!r} was not unpacked")
    await asyncio.to_thread(_move, ctx, fetched.directory, dest, "model")
    # The zip is unpacked at dest; gone, it frees its directory (a dest may share the name).
    await asyncio.to_thread(_remove_file, fetched.file)
    _mark_prepared(ctx, dest, "model")
    ctx.log.info("model placed", model=str(fetched.ref), dest=str(table.get("dest", "output")),
                 files=len(fetched.files))


async def _pretrained(ctx: JobContext, pretrained: dict[str, Any] | None) -> bool:
    """Download the pretrained model a parameter names; whether there was one."""
    if not pretrained:
        return False
    name = str(pretrained.get("parameter", "pretrained_model"))
    if ctx.params.get(name) is None:
        return False
    record = await ctx.pretrained_model(name)
    dest = ctx.confined(str(pretrained.get("dest", "models/pretrained.pth")), "pretrained model")
    label = f"pretrained model {record.get('name') or record['pk']}"
    # The real server's file of a pretrained model, as its Python client asks for it
    # (DownloadableViewSet): POST .../download {"filetype": "data"}. The embedded server
    # keeps no such file.
    path = f"/v1/pretrained-models/{int(record['pk'])}/download"
    try:
        await ctx.server.download("POST", path, dest, json={"filetype": "data"}, what=label)
    except RefusedError as e:
        raise JobFailed(f"{label}: the server gave no file for it (POST {path}: HTTP {e.status})") from None
    return True


def _class_names(ctx: JobContext, labels: dict[str, Any] | None) -> list[str] | None:
    """The class names in the definition's ``labels`` file; None without ``labels``."""
    if not labels:
        return None
    path = ctx.confined(str(labels.get("file", "data/labels.txt")), "labels")
    if not path.is_file():
        raise JobFailed(f"labels: {labels.get('file')} is not in the dataset")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return [line.split(",", 1)[1].strip() for line in text.splitlines()[1:] if "," in line]
    return [name.strip() for name in text.replace("\n", ",").split(",") if name.strip()]


def _expand(ctx: JobContext, body: Any, values: dict[str, Any], what: str) -> Any:
    """`body` (a text, or a list of lines/arguments) expanded by the toolkit, a failure
    naming `what` (the toolkit names every body "body")."""
    try:
        return ctx.expand(body, **values)
    except JobFailed as e:
        raise JobFailed(f"{what}: {e.reason.removeprefix('body: ')}") from None
