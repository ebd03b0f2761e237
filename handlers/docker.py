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
  ``${workspace}`` (``/workspace``), ``${num-classes}`` and ``${classes}`` (see ``labels``).
- ``env``: the containers' environment (placeholders allowed).
- ``mounts``: ``{"/prediction" = "prediction"}``: directories of the work directory
  mounted at other places too (the work directory itself is ``/workspace``).
- ``dataset``: ``{input = "dataset", dest = "data", archive = "zip",
  annotations_args = "dataset_options"}``: the job's dataset into ``dest``;
  ``annotations_args`` names a parameter (``Array<str>``) or is a list.
- ``model``: ``{input = "model", dest = "output"}``: a Predict job's model, unpacked.
- ``pretrained``: ``{parameter = "pretrained_model", dest = "models/pretrained.pth",
  config_value = "pretrained_model_config", config = "..."}``: the pretrained model's
  file (none when the parameter is null); ``${<config_value>}`` is `config` then, else empty.
- ``values``: extra ``${name}`` values (a job parameter of the same name wins).
- ``files``: ``[{path = "output/config.py", body = "body"}]``: a file written from a
  parameter (the template's ``body``) or from ``text``, placeholders expanded.
- ``labels``: ``{file = "data/labels.txt"}`` (comma-separated) or ``labels.csv``
  (``index,label`` with a header): where ``${classes}`` come from; ``classes = "list"``
  writes them as a Python list (``['cat', 'dog']``) instead of ``cat,dog``.
- ``progress_regex``: as the ``command`` handler's (``step``/``total``, ``percent``...).
- ``outputs``: ``[{name, type, path, zip = false, flat = false, required = true}]``;
  ``path`` is a glob in the work directory, or a list of them; ``zip = true`` zips what
  matches (the stock ``model``), ``flat = true`` under the files' base names.
- ``versions``, and for dry-run and the embedded server ``job_type``, ``domain``,
  ``framework``, ``inputs``, ``parameters``, ``description`` (as the ``command`` handler).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ufdl_node.api import (
    MISSING,
    HandlerFunc,
    HandlerSpec,
    JobContext,
    JobFailed,
    Needs,
    Parameter,
    PluginError,
    TemplateDescription,
    handler,
    replace_spec,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

KEYS = {"template", "image", "gpu", "commands", "env", "mounts", "dataset", "model", "pretrained",
        "values", "files", "labels", "progress_regex", "outputs", "versions", "job_type", "domain",
        "framework", "inputs", "parameters", "description"}
OUTPUT_KEYS = {"name", "type", "path", "zip", "flat", "required"}
WORKSPACE = "/workspace"
_PLACEHOLDER = re.compile(r"\$\{(?:(?P<sign>[+-])(?P<flag>[^:{}]+):(?P<text>[^{}]*)|(?P<name>[^{}]*))\}")


def handlers(settings: Any) -> Iterator[HandlerSpec | PluginError]:
    """One handler per template in ``docker_templates`` and the ``docker_template_dirs``."""
    for name, config in (getattr(settings, "docker_templates", None) or {}).items():
        yield _spec_or_problem(name, config, "settings docker_templates")
    for directory in getattr(settings, "docker_template_dirs", None) or []:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                with path.open("rb") as f:
                    config = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                yield PluginError(f"docker template file {path}: {e}")
                continue
            yield _spec_or_problem(str(config.get("template") or path.stem), config, str(path))


def _spec_or_problem(name: str, config: Any, origin: str) -> HandlerSpec | PluginError:
    try:
        spec = make_spec(name, config)
    except Exception as e:  # one bad template must not take the others with it
        return PluginError(f"docker template {name!r} from {origin}: {e}")
    return replace_spec(spec, source=f"{__file__} [template {name} from {origin}]")


def make_spec(name: str, config: dict[str, Any]) -> HandlerSpec:
    """The handler spec for template `name` with `config`; ValueError when it is wrong."""
    if not isinstance(config, dict):
        raise TypeError("expected a table of settings")
    unknown = set(config) - KEYS
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
    if not isinstance(config.get("image"), str) or not config["image"].strip():
        raise ValueError("'image' must name a parameter or an image reference")
    commands = config.get("commands")
    if not isinstance(commands, list) or not commands or not all(
            isinstance(c, str) or (isinstance(c, list) and c)
            or (isinstance(c, dict) and set(c) == {"parameter"}) for c in commands):
        raise ValueError("'commands' must be a non-empty list of strings, argument lists or "
                         "{ parameter = NAME } tables")
    tables = ("env", "mounts", "dataset", "model", "pretrained", "values", "labels", "parameters", "inputs")
    for key in tables:
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise TypeError(f"'{key}' must be a table")
    for container_path in (config.get("mounts") or {}):
        if not str(container_path).startswith("/") or str(container_path).rstrip("/") == WORKSPACE:
            raise ValueError(f"mount {container_path!r} must be an absolute path other than {WORKSPACE}")
    if config.get("progress_regex"):
        re.compile(config["progress_regex"])  # re.error is a ValueError
    for output in config.get("outputs") or []:
        if not isinstance(output, dict) or not {"name", "type", "path"} <= set(output) \
                or set(output) - OUTPUT_KEYS:
            raise ValueError(f"each output needs name, type and path (and may say zip, required): {output!r}")
    for item in config.get("files") or []:
        if not isinstance(item, dict) or "path" not in item or ("body" in item) == ("text" in item):
            raise ValueError(f"each file needs path and one of body (a parameter) or text: {item!r}")
    parameters = tuple(_parameter(p, d) for p, d in (config.get("parameters") or {}).items())
    description = TemplateDescription(
        job_type=config.get("job_type", "Export"), domain=config.get("domain"),
        framework=config.get("framework"), inputs=dict(config.get("inputs") or {}), parameters=parameters,
        description=config.get("description", f"runs in {config['image']} (ufdl-node docker handler)"))
    return handler(name, versions=config.get("versions"), needs=Needs(gpu=bool(config.get("gpu", True))),
                   description=description, name="docker")(_runner(dict(config)))


def _parameter(name: str, decl: Any) -> Parameter:
    if not isinstance(decl, dict) or "types" not in decl:
        raise ValueError(f"parameter {name!r} needs 'types'")
    types = decl["types"]
    types = (types,) if isinstance(types, str) else tuple(str(t) for t in types)
    return Parameter(name=name, types=types, default=decl.get("default", MISSING),
                     help=str(decl.get("help", "")), const=bool(decl.get("const", False)))


def _runner(config: dict[str, Any]) -> HandlerFunc:
    async def run_docker(ctx: JobContext) -> None:
        await run_configured(ctx, config)
    return run_docker


async def run_configured(ctx: JobContext, config: dict[str, Any]) -> None:
    """Prepare the work directory, run the commands in the image, upload the outputs."""
    image = await _image(ctx, config["image"])
    await _prepare_inputs(ctx, config)
    values: dict[str, Any] = {**(config.get("values") or {}), "job_pk": ctx.pk, "workspace": WORKSPACE,
                              **_labels(ctx, config.get("labels")),
                              **await _pretrained(ctx, config.get("pretrained"))}
    for item in config.get("files") or []:
        target = ctx.confined(str(item["path"]), f"file {item['path']!r}")
        body = ctx.params.get(item["body"]) if "body" in item else item["text"]
        if body is None:
            raise JobFailed(f"file {item['path']!r}: the job has no parameter {item.get('body')!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = _expand(ctx, body, values, f"file {item['path']}")
        target.write_text(lines if isinstance(lines, str) else "".join(f"{line}\n" for line in lines))
    binds = []
    for container_path, relative in (config.get("mounts") or {}).items():
        host = ctx.confined(str(relative), f"mount {container_path}")
        host.mkdir(parents=True, exist_ok=True)
        binds.append(f"{host}:{container_path}")
    env = {str(k): str(_expand(ctx, str(v), values, f"env {k}"))
           for k, v in (config.get("env") or {}).items()}
    for command in config["commands"]:
        if isinstance(command, dict):
            command = ctx.params.get(command["parameter"])
            if isinstance(command, str):
                command = shlex.split(command)
            if not command or not isinstance(command, list):
                raise JobFailed("the job's command parameter is empty")
        cmd = _expand(ctx, command, values, "command")
        await ctx.container(image, cmd, progress_regex=config.get("progress_regex") or None, env=env,
                            binds=binds)
    for output in config.get("outputs") or []:
        path = _collect(ctx, output)
        if path is not None:
            await ctx.upload(str(output["name"]), str(output["type"]), path)
    ctx.progress(1.0)


async def _image(ctx: JobContext, image: str) -> str | dict[str, Any]:
    """The docker-image record the parameter `image` names, or `image` as a reference."""
    if image not in ctx.params:
        return image
    value = ctx.params[image]
    fetch = getattr(ctx, "docker_image", None)
    if fetch is not None:
        record: dict[str, Any] = await fetch(image)
        return record
    # Without the work toolkit's ctx.docker_image: a record by primary key only.
    pk = value.get("pk") if isinstance(value, dict) else value
    if not str(pk).strip().isdigit():
        raise JobFailed(f"parameter {image!r}: {value!r} is no docker image primary key")
    path = await ctx.download(f"/v1/docker/{int(str(pk).strip())}", ".docker-image.json")
    try:
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise JobFailed(f"docker image {pk}: the server's record is not JSON") from None
    return loaded


async def _prepare_inputs(ctx: JobContext, config: dict[str, Any]) -> None:
    dataset, model = config.get("dataset"), config.get("model")
    if dataset:
        fetch = getattr(ctx, "dataset", None)
        if fetch is None:
            raise JobFailed("this node's handler API has no ctx.dataset")
        args = dataset.get("annotations_args")
        if isinstance(args, str):
            args = ctx.params.get(args)
        await fetch(str(dataset.get("input", "dataset")), dest=ctx.confined(str(dataset.get("dest", "data")),
                    "dataset"), archive=dataset.get("archive"), annotations_args=args or None)
    if model:
        fetch = getattr(ctx, "model", None)
        if fetch is None:
            raise JobFailed("this node's handler API has no ctx.model")
        await fetch(str(model.get("input", "model")), dest=ctx.confined(str(model.get("dest", "output")),
                    "model"))


async def _pretrained(ctx: JobContext, pretrained: dict[str, Any] | None) -> dict[str, Any]:
    """Download the pretrained model a parameter names; the config value that says so."""
    if not pretrained:
        return {}
    name = str(pretrained.get("parameter", "pretrained_model"))
    key = str(pretrained.get("config_value", "pretrained_model_config"))
    if ctx.params.get(name) is None:
        return {key: ""}
    fetch, server = getattr(ctx, "pretrained_model", None), getattr(ctx, "server", None)
    if fetch is None or server is None:
        raise JobFailed("this node's handler API has no ctx.pretrained_model")
    record = await fetch(name)
    dest = ctx.confined(str(pretrained.get("dest", "models/pretrained.pth")), "pretrained model")
    # The real server's pretrained-model file: POST .../download {"filetype": "data"}.
    await server.download("POST", f"/v1/pretrained-models/{int(record['pk'])}/download", dest,
                          json={"filetype": "data"}, what=f"pretrained model {record.get('name')}")
    return {key: str(pretrained.get("config", ""))}


def _labels(ctx: JobContext, labels: dict[str, Any] | None) -> dict[str, Any]:
    if not labels:
        return {}
    path = ctx.confined(str(labels.get("file", "data/labels.txt")), "labels")
    if not path.is_file():
        raise JobFailed(f"labels: {labels.get('file')} is not in the dataset")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        names = [line.split(",", 1)[1].strip() for line in text.splitlines()[1:] if "," in line]
    else:
        names = [name.strip() for name in text.replace("\n", ",").split(",") if name.strip()]
    classes = str(names) if labels.get("classes") == "list" else ",".join(names)
    return {"num-classes": len(names), "classes": classes}


def _expand(ctx: JobContext, body: Any, values: dict[str, Any], what: str) -> Any:
    """`body` (text, or a list of lines/arguments) with ``${...}`` expanded."""
    values = {**values, **ctx.params}
    if isinstance(body, list):
        out = [_expand_text(str(item), values, what) for item in body]
        return [line for line in out if line is not None]
    return _expand_text(str(body), values, what) or ""


def _expand_text(text: str, values: dict[str, Any], what: str) -> str | None:
    """One text expanded as the UFDL launcher does; None for a line a flag removed."""
    missing: list[str] = []
    flagged = False

    def replace(match: re.Match[str]) -> str:
        nonlocal flagged
        if match.group("sign"):
            flagged = True
            value = values.get(match.group("flag"))
            return match.group("text") if bool(value) == (match.group("sign") == "+") else ""
        name = match.group("name")
        if name not in values:
            missing.append(match.group(0))
            return match.group(0)
        value = values[name]
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    result = _PLACEHOLDER.sub(replace, text)
    if missing:
        raise JobFailed(f"{what}: no value for {', '.join(dict.fromkeys(missing))}")
    return None if flagged and not result else result


def _collect(ctx: JobContext, output: dict[str, Any]) -> Path | None:
    """The file to upload for `output`: its one match, or a zip of what matches."""
    name = str(output["name"])
    patterns = output["path"] if isinstance(output["path"], list) else [output["path"]]
    pattern = ", ".join(map(str, patterns))
    matches = sorted({Path(p) for glob_ in patterns
                      for p in glob.glob(str(ctx.work_dir / str(glob_)), recursive=True)})
    for match in matches:
        ctx.confined(match, f"output {name!r}")
    if not matches:
        if output.get("required", True):
            raise JobFailed(f"output {name!r}: nothing matches {pattern!r} in the work directory")
        return None
    if len(matches) == 1 and matches[0].is_file() and not output.get("zip"):
        return matches[0]
    files = [f for m in matches for f in ([m] if m.is_file() else sorted(m.rglob("*"))) if f.is_file()]
    for f in files:  # a link inside a matched directory must not reach out either
        ctx.confined(f, f"output {name!r}")
    if not files:
        raise JobFailed(f"output {name!r}: {pattern!r} matches only empty directories")
    base = Path(os.path.commonpath([m if m.is_dir() else m.parent for m in matches]))
    archive = ctx.work_dir / ".outputs" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name if output.get("flat") else f.relative_to(base).as_posix())
    return archive
