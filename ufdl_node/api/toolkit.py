"""The work side of :class:`~ufdl_node.api.JobContext`: what a UFDL job works on.

Thin delegates to :mod:`ufdl_node.work`, filled in from the job: its inputs and
parameters, its work and cache directories, and the node's session with the job
server (``ctx.server``, whose transient faults are retried for the node's
``handler_io_retry_s``, default 180 s, before the job fails with the reason).

- ``await ctx.dataset()``: the ``dataset`` input's record, its files in
  ``work_dir/dataset`` (cached by content hash across jobs, or the server's
  archive), converted on the node into the layout ``options`` (a template's
  ``dataset_options``) ask for, and, for image classification, its labels;
- ``await ctx.model()``: a Predict job's ``model`` input, downloaded and unzipped;
- ``await ctx.pretrained_model(param)``, ``await ctx.docker_image(param)``: the
  records a parameter names;
- ``ctx.expand(body, **values)``: ``${name}`` expansion with every parameter;
- ``await ctx.upload_zip(name, type, dir_or_files, compression="stored")``,
  ``await ctx.upload_metadata(data)``;
- ``await ctx.store_prediction_files(dataset, "prediction/out", "rois-csv", store=..., clear=...)``:
  a predict job's prediction files written back into the dataset per domain (OD boxes with
  scores, transcriptions, spectrum or image labels with confidence), as the stock executors do.
- ``await ctx.store_predictions(dataset, labels, clear=False)``: a predict job's labels
  written back with the real server's calls (:mod:`ufdl_node.work.labels`): each predicted
  file ends up with exactly its label, every other file keeps its labels; ``clear=True``
  (a template's ``clear_dataset``) removes every label first. ``ctx.clear_annotations``
  clears alone; ``ctx.add_labels``, ``ctx.remove_labels`` and ``ctx.set_labels`` make the
  single calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..errors import JobFailed
from ..settings import NodeSettings
from ..work import (
    Dataset,
    Model,
    ServerAccess,
    add_labels,
    clear_annotations,
    docker_image,
    expand,
    fetch_dataset,
    fetch_model,
    pretrained_model,
    remove_labels,
    set_labels,
    store_predictions,
    upload_metadata,
    upload_zip,
)
from ..work.datasets import dataset_record
from ..work.predictions import wants_confidence
from ..work.writeback import store_directory
from .jobio import JobIO

if TYPE_CHECKING:
    from .values import Value

DATASETS_CACHE = "datasets"  # under cache_dir: the files of every dataset, by sha256
# ctx.server's retry budget where a context has no settings (tests, tools): the setting's default
DEFAULT_RETRY_S: float = NodeSettings.model_fields["handler_io_retry_s"].default


class WorkTools:
    """Datasets, models, records, ``${}`` expansion and the stock outputs, for one job."""

    work_dir: Path
    cache_dir: Path
    io: JobIO
    settings: NodeSettings | None
    inputs: dict[str, Value]
    parameters: dict[str, Value]
    params: dict[str, Any]
    template: dict[str, Any]
    _server: ServerAccess | None = None

    def confined(self, path: Path | str, what: str) -> Path:
        raise NotImplementedError  # pragma: no cover - JobContext defines it

    async def upload(self, name: str, type_: str, path_or_bytes: Path | str | bytes) -> None:
        raise NotImplementedError  # pragma: no cover - JobContext defines it

    @property
    def server(self) -> ServerAccess:
        """Calls to any server resource with the node's session (``json``, ``get``, ``post``,
        ``list_records``, ``download``); transient faults are retried for
        ``handler_io_retry_s``, then the job fails; refusals raise the typed errors."""
        if self._server is None:
            make = getattr(self.io, "server_io", None)
            if make is None:
                raise JobFailed("this job's IO gives handlers no access to the server")
            retry_s = DEFAULT_RETRY_S if self.settings is None else self.settings.handler_io_retry_s
            self._server = ServerAccess(make(), retry_s=retry_s)
        return self._server

    def _input(self, name: str) -> Value:
        value = self.inputs.get(name)
        if value is None:
            known = ", ".join(sorted(self.inputs)) or "none"
            raise JobFailed(f"the job has no input {name!r} (it has: {known})")
        return value

    def _parameter(self, name: str) -> Value:
        value = self.parameters.get(name)
        if value is None:
            known = ", ".join(sorted(self.parameters)) or "none"
            raise JobFailed(f"the job has no parameter {name!r} (it has: {known})")
        return value

    async def dataset(self, name: str = "dataset", *, options: Sequence[str] | None = None,
                      options_name: str = "options", archive: str | None = None,
                      annotations_args: Sequence[str] | None = None, copy: bool = False,
                      domain: str | None = None, unlabelled: Sequence[str] = ()) -> Dataset:
        """The dataset input `name` (PK, Name or object) ready to work on, in ``work_dir/NAME``.

        By default its files are fetched one by one into the node's cache (a second job
        on the same dataset downloads nothing) and linked into the job's directory
        (`copy` for files the handler changes in place); `archive` (``"zip"`` or
        ``"tar.gz"``) asks for the server's archive (its raw files) instead.
        `options` (a template's ``dataset_options``, wai.annotations writer options such
        as ``["to-subdir-ic", "-o", "."]``; `annotations_args` is their older name) are
        converted on the node, as the stock launcher does: the directory then holds
        that layout (see :mod:`ufdl_node.work.convert` for what the node runs). A
        dataset that is missing, empty, or of another domain than the input's type (or
        `domain`), options the node does not run, or annotations that do not fit them
        fail the job with one line (naming the template and `options_name`, the
        template's option). `unlabelled` (``["every:1"]``...): the frames taken from an
        object-detection dataset's videos (:mod:`ufdl_node.work.videoframes`).
        """
        value = self._input(name)
        dest = self.confined(name, f"input {name!r}")
        template = self.template.get("name")
        step = f"{name}: {options_name}" if not template else \
            f"template {template!r}, {name} step: {options_name}"
        return await fetch_dataset(self.server, value.raw, value.type, dest=dest,
                                   cache_dir=self.cache_dir / DATASETS_CACHE, domain=domain,
                                   options=options, annotations_args=annotations_args, step=step,
                                   archive=archive, copy=copy, unlabelled=unlabelled)

    async def model(self, name: str = "model", *, unpack: bool = True) -> Model:
        """The job-output input `name` (a Predict job's model) downloaded into ``work_dir/NAME``
        and, with `unpack`, unzipped into ``work_dir/NAME/model``; not a zip fails the job."""
        value = self._input(name)
        return await fetch_model(self.server, value.raw, self.confined(name, f"input {name!r}"),
                                 unpack=unpack)

    async def pretrained_model(self, param: str = "pretrained_model") -> dict[str, Any]:
        """The pretrained-model record parameter `param` names (PK, name or object)."""
        value = self._parameter(param)
        return await pretrained_model(self.server, value.raw, value.type)

    async def docker_image(self, param: str = "docker_image") -> dict[str, Any]:
        """The Docker-image record parameter `param` names (its registry credentials are kept
        out of every log line)."""
        value = self._parameter(param)
        return await docker_image(self.server, value.raw, value.type)

    @overload
    def expand(self, body: str, **values: Any) -> str: ...

    @overload
    def expand(self, body: list[str], **values: Any) -> list[str]: ...

    def expand(self, body: str | list[str], **values: Any) -> str | list[str]:
        """`body` (a text or the lines of an ``Array<str>``) with ``${name}`` placeholders
        expanded from the job's parameters and `values` (which do not override a
        parameter); JobFailed names every placeholder without a value."""
        return expand(body, self.params, values)

    async def upload_zip(self, name: str, type_: str, source: Path | str | Iterable[Path | str], *,
                         compression: str = "stored") -> Path:
        """Zip a directory, or files under their base names (paths relative to the work
        directory), and upload the zip as output NAME/TYPE; return the zip. Members are
        stored (``compression="stored"``, the default: model weights barely compress and
        deflating costs ten times the disk's time) or compressed (``"deflate"``: text).
        The zip is written in a thread, hashed as it is written."""
        if isinstance(source, (str, Path)):
            checked: Path | list[Path] = self.confined(source, f"output {name!r}")
        else:
            checked = [self.confined(p, f"output {name!r}") for p in source]
        target = self.work_dir / ".outputs" / f"{safe_file_name(name)}.zip"
        return await upload_zip(self._upload_path, name, type_, checked, target, compression=compression)

    async def upload_metadata(self, data: Any, *, name: str = "metadata", type_: str = "JSON") -> Path:
        """Upload `data` as JSON, the ``metadata`` output stock templates write."""
        target = self.work_dir / ".outputs" / f"{safe_file_name(name)}.json"
        return await upload_metadata(self._upload_path, data, target, name=name, type_=type_)

    async def clear_annotations(self, dataset: Dataset | int) -> None:
        """Remove every annotation of the dataset (its labels): cannot be undone; read its
        labels first if the job needs them."""
        await clear_annotations(self.server, _pk(dataset))

    async def store_predictions(self, dataset: Dataset | int, labels: Mapping[str, str | None], *,
                                clear: bool = False) -> int:
        """Write each image's predicted label into the dataset, as stock predict templates do
        with ``store_predictions``; the calls made. Each predicted image ends up holding just
        its label (None or "": left as it is); other files keep theirs. `clear` (a
        template's ``clear_dataset``) removes every label of the dataset first. A failure
        part-way fails the job with one line (labels written so far stay)."""
        return await store_predictions(self.server, _pk(dataset), labels, clear=clear)

    async def store_prediction_files(self, dataset: Dataset | str, directory: Path | str, fmt: str, *,
                                     store: bool = True, clear: bool = False, confidence_scores: Any = None,
                                     roots: Sequence[Path | str] = ()) -> int:
        """A predict job's prediction files (``ic-json``, ``ic-csv``, ``rois-csv``, ``sp-txt``,
        ``sc-txt``: :mod:`ufdl_node.work.predictions`) in `directory` (in the work directory)
        read, and with `store` written back into `dataset` (a Dataset, or the name of the
        job's dataset input) per its domain, as the stock predict executors do
        (:mod:`ufdl_node.work.writeback`); `clear` (``clear_dataset``) clears the dataset
        first; `confidence_scores` (the template's parameter) adds the stock ``Common``
        confidence scores to each file's metadata; `roots`: where else the dataset's files
        are (an object-detection image without a file type needs its size). The files written."""
        root = self.confined(directory, "predictions")
        if isinstance(dataset, Dataset):
            record, where = dataset.record, [dataset.directory]
        else:
            value = self._input(dataset)
            record, where = await dataset_record(self.server, value.raw, value.type), []
        where += [self.confined(r, "predictions") for r in roots]
        return await store_directory(self.server, int(record["pk"]), root, fmt, record.get("files") or {},
                                     store=store, clear=clear, confidence=wants_confidence(confidence_scores),
                                     roots=where)

    async def add_labels(self, dataset: Dataset | int, images: Iterable[str],
                         labels: Iterable[str]) -> dict[str, list[str]]:
        """Give every image every label (``PATCH .../categories {"method": "add"}``); the new ones."""
        return await add_labels(self.server, _pk(dataset), images, labels)

    async def remove_labels(self, dataset: Dataset | int, images: Iterable[str],
                            labels: Iterable[str]) -> dict[str, list[str]]:
        """Take every label from every image (``PATCH .../categories {"method": "remove"}``);
        the ones that were there."""
        return await remove_labels(self.server, _pk(dataset), images, labels)

    async def set_labels(self, dataset: Dataset | int,
                         labels: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
        """Make each named file's labels exactly its list (``POST .../categories {file: [...]}``;
        ``[]`` removes them); files not named keep theirs."""
        return await set_labels(self.server, _pk(dataset), labels)

    async def _upload_path(self, name: str, type_: str, path: Path) -> None:
        await self.upload(name, type_, path)


def _pk(dataset: Dataset | int) -> int:
    return dataset.pk if isinstance(dataset, Dataset) else int(dataset)


def safe_file_name(name: str) -> str:
    """A file name made from a name a job or a server gave: no separators, no dot-dot,
    never empty, at most 120 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned[:120] or "output"

