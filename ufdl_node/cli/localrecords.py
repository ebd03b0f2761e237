"""What `dry-run` needs for a docker template: the node's docker settings from ``--config``,
the shipped and configured definitions, and records on the throw-away server for local things.

- ``--param docker_image=REF`` where REF is an image reference (not a record's pk): a CPU
  docker-image record for REF (``url`` = REF, ``cpu`` true, the parameter's domain and
  framework) is made on the throw-away server, and the job names it by pk. The node then
  runs the local image (``docker_pull_policy`` "if-missing": a local image is not pulled).
- ``--param pretrained_model=FILE`` where FILE is a local file: a pretrained-model record
  with that file (``POST /v1/pretrained-models/{pk}/upload``), named by pk. A name that is
  no record (the YOLOv5 templates' default ``yolov5m_v6.0``) fails the job in one line
  saying so: give a file.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..client import UfdlClient
from ..errors import ConfigError, ServerError
from ..logs import one_line
from ..settings import SHIPPED_DOCKER_DIR, SHIPPED_HANDLERS_DIR, NodeSettings, load_settings
from ..ufdltypes import domain_code

# What a dry-run takes from the node's configuration file: its handlers and containers.
CONFIG_KEYS = ("command_templates", "command_template_dirs", "docker_templates", "docker_url",
               "docker_pull_policy", "docker_user", "docker_shm_size_bytes", "docker_network_mode",
               "docker_binds", "docker_env", "docker_labels")
_DOMAIN = re.compile(r"Domain<'([^']*)'>")
_FRAMEWORK = re.compile(r"Framework<'([^']*)', '([^']*)'>")
LOCAL_VERSION = "local"
CUDA_VERSION = "11.1"  # a CUDA version the server knows; a cpu record does not use it


def config_settings(config: Path | None, handler_dirs: list[Path],
                    docker_template_dirs: list[Path]) -> tuple[dict[str, Any], list[Path], SimpleNamespace]:
    """From ``--config`` (or nothing): the settings a dry-run's node takes from it, the handler
    directories (the config's, then `handler_dirs`), and the settings the definition-driven
    handlers load from (the shipped docker.d first, then the config's and
    `docker_template_dirs`). ConfigError (one line per problem) for a bad file."""
    loaded = load_settings(NodeSettings, config) if config is not None else None
    taken = {key: getattr(loaded, key) for key in CONFIG_KEYS} if loaded is not None else {}
    dirs = [*(loaded.handler_dirs if loaded is not None else [SHIPPED_HANDLERS_DIR]), *handler_dirs]
    docker_dirs = [SHIPPED_DOCKER_DIR, *(loaded.docker_template_dirs if loaded is not None else []),
                   *docker_template_dirs]
    docker_dirs = list(dict.fromkeys(Path(d) for d in docker_dirs))
    taken["docker_template_dirs"] = docker_dirs
    plugins = SimpleNamespace(docker_template_dirs=docker_dirs,
                              docker_templates=taken.get("docker_templates", {}),
                              command_template_dirs=taken.get("command_template_dirs", []),
                              command_templates=taken.get("command_templates", {}))
    return taken, list(dict.fromkeys(dirs)), plugins


def _domain_framework(types: list[str], kind: str) -> tuple[str, dict[str, str]]:
    """The domain code and framework of the first of `types` naming a `kind` record."""
    for type_ in types:
        if f"{kind}<" in type_:
            domain, framework = _DOMAIN.search(type_), _FRAMEWORK.search(type_)
            if domain and framework:
                return domain_code(domain.group(1)), {"name": framework.group(1),
                                                      "version": framework.group(2)}
    raise ConfigError(f"no {kind} type with a domain and a framework among {types}")


def _pk_type(types: list[str], kind: str) -> str:
    return next((t for t in types if t.startswith(f"PK<{kind}<")), f"PK<{kind}>")


async def local_records(client: UfdlClient, declared: dict[str, Any],
                        params: dict[str, Any]) -> dict[str, Any]:
    """`params` with a docker-image reference and a local pretrained-model file made records
    on the server (see the module's docstring), named by pk."""
    done = dict(params)
    for name, entry in params.items():
        types = [str(t) for t in (declared.get(name) or {}).get("types") or []]
        value = entry.get("value")
        if not isinstance(value, str) or value.isdigit():
            continue
        if any(t.startswith(("Name<DockerImage<", "DockerImage<")) for t in types):
            pk = await _docker_record(client, value, types)
            done[name] = {"value": pk, "type": _pk_type(types, "DockerImage")}
        elif any("PretrainedModel<" in t for t in types) and Path(value).is_file():
            pk = await _pretrained_record(client, Path(value), types)
            done[name] = {"value": pk, "type": _pk_type(types, "PretrainedModel")}
    return done


async def _docker_record(client: UfdlClient, ref: str, types: list[str]) -> int:
    domain, framework = _domain_framework(types, "DockerImage")
    body = {"name": ref, "version": LOCAL_VERSION, "url": ref, "registry_url": "",
            "registry_username": None, "registry_password": None, "cuda_version": CUDA_VERSION,
            "framework": framework, "domain": domain, "tasks": ["Train", "Predict"],
            "min_hardware_generation": None, "cpu": True, "licence": "Apache 2.0"}
    try:
        made = await client.request("POST", "/v1/docker/create", json=body)
    except ServerError as e:
        raise ConfigError(f"--param docker_image={ref}: the throw-away server refused a record "
                          f"for it: {one_line(e, 200)}") from None
    return int(made["pk"])


async def _pretrained_record(client: UfdlClient, path: Path, types: list[str]) -> int:
    domain, framework = _domain_framework(types, "PretrainedModel")
    body = {"name": path.name, "description": f"{path} (dry-run)", "url": path.resolve().as_uri(),
            "metadata": {}, "framework": framework, "domain": domain, "licence": "Apache 2.0"}
    try:
        made = await client.request("POST", "/v1/pretrained-models/create", json=body)
        data = await asyncio.to_thread(path.read_bytes)
        await client.request("POST", f"/v1/pretrained-models/{int(made['pk'])}/upload", data=data,
                             headers={"Content-Type": "application/octet-stream"})
    except ServerError as e:
        raise ConfigError(f"pretrained model {path}: the throw-away server refused it: "
                          f"{one_line(e, 200)}") from None
    return int(made["pk"])
