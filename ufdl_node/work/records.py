"""Server records a job refers to: datasets, Docker images, pretrained models, job outputs.

A template parameter or input names a record in one of three forms, as the
UFDL job types define them (``ufdl-job-types``):

- ``PK<...>``: the primary key (an int, or a string of digits);
- ``Name<...>``: a name; datasets and Docker images are named ``"<name>
  v<version>"`` (``"dogs v1"``), pretrained models by their bare name. A
  dataset or image name without a `` v<version>`` suffix picks the newest
  version (the launcher would refuse it);
- the object form: the record itself, or any object with its ``pk``.

:func:`fetch_record` turns any of them into the server's record; a record that
does not exist, or that the node's user may not read, fails the job with a
one-line reason ("dataset 42 not found"). A Predict job's ``model`` input is
a job output (``JobOutput<...>``: the output's pk); :func:`fetch_model`
downloads it (``POST /v1/job-outputs/{pk}/download``) and unpacks a zip.
"""

from __future__ import annotations

import asyncio
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import JobFailed, NotFound, PermissionDenied
from ..logs import one_line, register_secret
from .archives import DEFAULT_MAX_TOTAL_BYTES, extract
from .server_access import ServerAccess

# The data domains of a stock server: record fields carry the code, types the description.
DOMAINS = {"ic": "Image Classification", "od": "Object Detection", "is": "Image Segmentation",
           "sp": "Speech", "sc": "Spectrum Classification"}
_V_NAME = re.compile(r"^(?P<name>.*) v(?P<version>[^ ]+)$")
_DOMAIN_ARG = re.compile(r"Domain<'(?P<domain>[^']*)'>")


@dataclass(frozen=True)
class Resource:
    """A kind of server record: its label in messages and where the server keeps it."""

    label: str
    path: str  # collection path: "{path}/{pk}" is one record, "{path}/list" lists them
    versioned: bool  # named "<name> v<version>"


DATASET = Resource("dataset", "/v1/datasets", versioned=True)
DOCKER_IMAGE = Resource("docker image", "/v1/docker", versioned=True)
PRETRAINED_MODEL = Resource("pretrained model", "/v1/pretrained-models", versioned=False)


@dataclass(frozen=True)
class Ref:
    """A reference to one record: by primary key, or by name (and version)."""

    resource: Resource
    pk: int | None = None
    name: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.pk is not None:
            return f"{self.resource.label} {self.pk}"
        shown = f"{self.name} v{self.version}" if self.version is not None else self.name
        return f"{self.resource.label} {shown!r}"


def _pk(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,18}\s*", value) and int(value) > 0:
        return int(value)
    return None


def parse_ref(resource: Resource, raw: Any, type_: str | None = None) -> Ref:
    """`raw` (a PK, a Name or the object form; `type_` says which when known) as a Ref."""
    by_name = bool(type_) and str(type_).strip().startswith("Name<")
    if isinstance(raw, dict):
        pk = _pk(raw.get("pk"))
        if pk is None:
            raise JobFailed(f"{resource.label}: the object {one_line(repr(raw), 80)} has no valid pk")
        return Ref(resource, pk=pk)
    if not by_name:
        pk = _pk(raw)
        if pk is not None:
            return Ref(resource, pk=pk)
    if isinstance(raw, str) and raw.strip():
        name = raw.strip()
        match = _V_NAME.match(name) if resource.versioned else None
        if match:
            return Ref(resource, name=match["name"], version=match["version"])
        return Ref(resource, name=name)
    raise JobFailed(f"{resource.label}: {one_line(repr(raw), 80)} is neither a primary key, a name "
                    f"nor a record")


def _exact(field: str, value: Any) -> dict[str, Any]:
    return {"type": "exact", "field": field, "value": value}


async def fetch_record(access: ServerAccess, ref: Ref) -> dict[str, Any]:
    """The server's record for `ref`; JobFailed when it is missing or not readable."""
    res = ref.resource
    try:
        if ref.pk is not None:
            record = await access.get(f"{res.path}/{ref.pk}", what=str(ref))
        else:
            record = await _by_name(access, ref)
    except NotFound:
        raise JobFailed(f"{ref} not found") from None
    except PermissionDenied:
        raise JobFailed(f"{ref}: the node's user may not read it") from None
    if not isinstance(record, dict) or _pk(record.get("pk")) is None:
        raise JobFailed(f"{ref}: the server answered {one_line(repr(record), 80)}, not a record")
    return record


async def _by_name(access: ServerAccess, ref: Ref) -> Any:
    res = ref.resource
    expressions = [_exact("name", ref.name)]
    if ref.version is not None:
        version: Any = ref.version
        if res is DATASET:
            if not ref.version.isdigit():
                raise JobFailed(f"{ref}: a dataset's version is a number")
            version = int(ref.version)
        expressions.append(_exact("version", version))
    order = [{"field": "version", "ascending": False}] if res.versioned else [{"field": "pk"}]
    found = await access.list_records(f"{res.path}/list", {"expressions": expressions, "order_by": order},
                              what=str(ref))
    if not found:
        raise NotFound(f"{res.path}/list", f"no {res.label} named {ref.name!r}")
    if ref.version is None and res.versioned:  # the newest, whatever order the server kept
        return max(found, key=_version_key)
    return found[0]


def _version_key(record: Any) -> tuple[int, int, str]:
    version = str(record.get("version", "")) if isinstance(record, dict) else ""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def domain_of_type(type_: str | None) -> str | None:
    """The domain a UFDL type names (``PK<Dataset<Domain<'Image Classification'>>>`` →
    ``"Image Classification"``), or None."""
    match = _DOMAIN_ARG.search(type_ or "")
    return match["domain"] if match else None


def domain_name(value: Any) -> str:
    """A domain as its description: ``"ic"`` → ``"Image Classification"``; records that
    nest the domain (``{"name": "ic", ...}``) are read too."""
    if isinstance(value, dict):
        value = value.get("description") or value.get("name")
    text = str(value or "").strip()
    return DOMAINS.get(text.lower(), text)


def same_domain(a: Any, b: Any) -> bool:
    """Whether two domains (code, description or record) are one."""
    return domain_name(a).casefold() == domain_name(b).casefold()


async def docker_image(access: ServerAccess, raw: Any, type_: str | None = None) -> dict[str, Any]:
    """The Docker-image record a parameter names (PK, ``"name vversion"`` or object).

    Its registry password is registered as a secret, so that no log line shows it.
    """
    record = await fetch_record(access, parse_ref(DOCKER_IMAGE, raw, type_))
    for key in ("registry_password", "registry_username"):
        if isinstance(record.get(key), str):
            register_secret(record[key])
    return record


async def pretrained_model(access: ServerAccess, raw: Any, type_: str | None = None) -> dict[str, Any]:
    """The pretrained-model record a parameter names (PK, name or object)."""
    return await fetch_record(access, parse_ref(PRETRAINED_MODEL, raw, type_))


@dataclass(frozen=True)
class OutputRef:
    """A job output: by its own pk, or by (job pk, NAME, TYPE)."""

    pk: int | None = None
    job: int | None = None
    name: str | None = None
    type: str | None = None

    def __str__(self) -> str:
        if self.pk is not None:
            return f"job output {self.pk}"
        return f"output {self.name!r} of job {self.job}"

    def download_call(self) -> tuple[str, str]:
        """The (method, path) that gives this output's bytes."""
        if self.pk is not None:
            return "POST", f"/v1/job-outputs/{self.pk}/download"
        return "GET", (f"/v1/jobs/{self.job}/outputs/{quote(str(self.name), safe='')}/"
                       f"{quote(str(self.type), safe='')}")


def parse_output_ref(raw: Any) -> OutputRef:
    """A ``JobOutput<...>`` value: the output's pk, ``{"pk": n}``, or ``{"job", "name", "type"}``."""
    if isinstance(raw, dict):
        if _pk(raw.get("job")) is not None and isinstance(raw.get("name"), str) \
                and isinstance(raw.get("type"), str):
            return OutputRef(job=_pk(raw["job"]), name=raw["name"], type=raw["type"])
        raw = raw.get("pk")
    pk = _pk(raw)
    if pk is None:
        raise JobFailed(f"model: {one_line(repr(raw), 80)} is not a job output (its pk, or "
                        f"{{job, name, type}})")
    return OutputRef(pk=pk)


@dataclass(frozen=True)
class Model:
    """A downloaded model: the file as the server sent it, and where it was unpacked."""

    ref: OutputRef
    file: Path
    directory: Path | None
    files: tuple[Path, ...]


async def fetch_model(access: ServerAccess, raw: Any, dest: Path | str, *, unpack: bool = True,
                      max_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Model:
    """Download the job output `raw` (a Predict job's ``model``) into directory `dest`.

    With `unpack` (the stock contract: a Train job's model is a zip) the output must be
    a zip, unpacked into ``dest/model``; anything else fails the job.
    """
    ref = parse_output_ref(raw)
    root = Path(dest)
    method, path = ref.download_call()
    try:
        file = await access.download(method, path, root / "model.zip", max_bytes=max_bytes, what=str(ref))
    except NotFound:
        raise JobFailed(f"{ref} not found") from None
    except PermissionDenied:
        raise JobFailed(f"{ref}: the node's user may not read it") from None
    if not unpack:
        return Model(ref, file, None, ())
    if not zipfile.is_zipfile(file):
        raise JobFailed(f"{ref} is not a zip archive, so it is no model of a stock Train job")
    directory = root / "model"
    files = await asyncio.to_thread(extract, file, directory, max_total_bytes=max_bytes)
    return Model(ref, file, directory, tuple(files))
