"""The ``docker`` handler's inputs: a job's dataset, model, pretrained model and labels put in
its work directory where a definition says (``handlers/docker.py`` documents the keys).

Each step leaves a marker in ``.ufdl-prepared/`` once its input is whole, so that a handler
run again after a restart (its container re-attached) keeps it, and a step cut short is
redone from scratch. Everything of size (moves, unpacking, reading labels) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import JobFailed, RefusedError
from ..work.archives import extract
from .context import JobContext

PREPARED_DIR = ".ufdl-prepared"  # in the work directory: one marker per preparation step done
# A downloaded file is the node user's alone (0600); a container may run as another user
# (nobody, under a root daemon), and must read the model it is given.
READABLE = 0o644


def dest_in_work_dir(ctx: JobContext, table: dict[str, Any], default: str, what: str) -> Path:
    """Where `table` (a ``dataset`` or ``model``) puts its input: in the work directory, not it."""
    relative = str(table.get("dest", default))
    dest = ctx.confined(relative, f"{what} dest")
    work_dir = ctx.work_dir.resolve()
    if dest == work_dir or not dest.is_relative_to(work_dir):
        raise JobFailed(f"{what} dest {relative!r} must be a directory inside the work directory")
    return dest


def move_into_place(ctx: JobContext, source: Path, dest: Path, what: str) -> None:
    """Put the directory (or file) `source` at `dest` (one rename: no copy of the files)."""
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


def _marker(ctx: JobContext, what: str) -> Path:
    return ctx.work_dir / PREPARED_DIR / what


async def prepared(ctx: JobContext, dest: Path, what: str, *, file: bool = False) -> bool:
    """Whether the `what` step (``dataset``, ``model``) is done in this work directory: a
    handler run again after a restart (its container re-attached) finds it kept there.

    The marker is written last, after the input is whole at `dest` (a directory, or with
    `file` a file): a kept `dest` without it is a step cut short, removed to be redone from
    scratch."""
    marker = _marker(ctx, what)
    kept = dest.is_file() if file else dest.is_dir()
    if marker.is_file() and marker.read_text(encoding="utf-8") == str(dest) and kept:
        ctx.log.info(f"{what} kept from before the restart",
                     dest=str(dest.relative_to(ctx.work_dir.resolve())))
        return True
    marker.unlink(missing_ok=True)
    if dest.is_dir() and not dest.is_symlink():
        await asyncio.to_thread(shutil.rmtree, dest)
    elif file and (dest.is_file() or dest.is_symlink()):
        dest.unlink()
    return False


def mark_prepared(ctx: JobContext, dest: Path, what: str) -> None:
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


def _dataset_options(ctx: JobContext, args: Any) -> tuple[list[str] | None, str]:
    """The wai.annotations options a ``dataset`` table's ``options`` give, and their name."""
    options_name = "dataset options"
    if isinstance(args, str):  # the name of a parameter (Array<str>, or str split as a shell would)
        if args not in ctx.params:
            raise JobFailed(f"dataset: options name the parameter {args!r}, which the job lacks")
        options_name = args
        args = ctx.params[args]
        args = shlex.split(args) if isinstance(args, str) else args
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise JobFailed(f"dataset: {options_name} must be strings, not {args!r}")
    return args or None, options_name


def _unlabelled(ctx: JobContext, given: Any) -> list[str]:
    """The video frames a ``dataset`` table's ``unlabelled`` asks for (``from-ufdl-od
    --unlabelled``): a parameter's name (``Array<str>``; a text is one value) or a list."""
    if isinstance(given, str):
        if given not in ctx.params:
            raise JobFailed(f"dataset: unlabelled names the parameter {given!r}, which the job lacks")
        value = ctx.params[given]
        given = [value] if isinstance(value, str) else value
    if not isinstance(given, list) or not all(isinstance(v, str) for v in given):
        raise JobFailed(f"dataset: unlabelled must be strings, not {given!r}")
    return given


async def place_dataset(ctx: JobContext, table: dict[str, Any] | None) -> None:
    """The job's dataset, converted on the node when the definition gives options, at its dest."""
    if not table:
        return
    name = str(table.get("input", "dataset"))
    dest = dest_in_work_dir(ctx, table, "data", "dataset")
    if await prepared(ctx, dest, "dataset"):
        return
    args, options_name = _dataset_options(ctx, table.get("options", table.get("annotations_args")))
    frames = _unlabelled(ctx, table.get("unlabelled", []))
    fetched = await ctx.dataset(name, options=args, options_name=options_name,
                                archive=table.get("archive"), unlabelled=frames)
    await asyncio.to_thread(move_into_place, ctx, fetched.directory, dest, "dataset")
    mark_prepared(ctx, dest, "dataset")
    ctx.log.info("dataset placed", dataset=fetched.pk, dest=str(table.get("dest", "data")),
                 files=len(fetched.files), archive=table.get("archive"), options=args)


async def place_model(ctx: JobContext, table: dict[str, Any] | None) -> None:
    """A Predict job's model at its dest: a zip job output unpacked there, or (``unpack =
    false``) the output's file as it is, `dest` then naming the file."""
    if not table:
        return
    name = str(table.get("input", "model"))
    unpack = bool(table.get("unpack", True))
    dest = dest_in_work_dir(ctx, table, "output" if unpack else "output/model", "model")
    if await prepared(ctx, dest, "model", file=not unpack):
        return
    fetched = await ctx.model(name, unpack=unpack)
    if not unpack:
        await asyncio.to_thread(move_into_place, ctx, fetched.file, dest, "model")
        dest.chmod(READABLE)
    elif fetched.directory is None:  # pragma: no cover - unpack=True always gives one
        raise JobFailed(f"model: input {name!r} was not unpacked")
    else:
        await asyncio.to_thread(move_into_place, ctx, fetched.directory, dest, "model")
        # The zip is unpacked at dest; gone, it frees its directory (a dest may share the name).
        await asyncio.to_thread(_remove_file, fetched.file)
    mark_prepared(ctx, dest, "model")
    ctx.log.info("model placed", model=str(fetched.ref), dest=str(dest.relative_to(ctx.work_dir.resolve())),
                 files=len(fetched.files), unpacked=unpack)


async def fetch_pretrained(ctx: JobContext, pretrained: dict[str, Any] | None) -> bool:
    """Download the pretrained model a parameter names (a file at ``dest``, or with
    ``extract = true`` a zip/tar(.gz) unpacked into the directory ``dest``); whether there
    was one."""
    if not pretrained:
        return False
    name = str(pretrained.get("parameter", "pretrained_model"))
    if ctx.params.get(name) is None:
        return False
    try:
        record = await ctx.pretrained_model(name)
    except (RefusedError, JobFailed) as e:
        if isinstance(e, JobFailed) and "not found" not in e.reason:
            raise
        why = f"HTTP {e.status}" if isinstance(e, RefusedError) else e.reason
        raise JobFailed(f"pretrained model {ctx.params.get(name)!r} ({name}): the server has no such "
                        f"record ({why}); give {name} a pretrained model the server has") from None
    extract_to = bool(pretrained.get("extract"))
    default = "models/pretrained" if extract_to else "models/pretrained.pth"
    dest = ctx.confined(str(pretrained.get("dest", default)), "pretrained model")
    label = f"pretrained model {record.get('name') or record['pk']}"
    file = dest.with_name(f".{dest.name}.download") if extract_to else dest
    # The real server's file of a pretrained model, as its Python client asks for it
    # (DownloadableViewSet): POST .../download {"filetype": "data"}.
    path = f"/v1/pretrained-models/{int(record['pk'])}/download"
    try:
        await ctx.server.download("POST", path, file, json={"filetype": "data"}, what=label)
    except RefusedError as e:
        raise JobFailed(f"{label}: the server gave no file for it (POST {path}: HTTP {e.status})") from None
    if extract_to:
        await asyncio.to_thread(_extract_pretrained, file, dest, label)
    else:
        dest.chmod(READABLE)
    return True


def _extract_pretrained(file: Path, dest: Path, label: str) -> None:
    """Unpack a pretrained model's archive into `dest` (nothing of a member that climbs out
    with ``..``, an absolute name or a link is written: one-line JobFailed), then remove it."""
    try:
        extract(file, dest)
    except JobFailed as e:
        raise JobFailed(f"{label}: {e.reason}") from None
    finally:
        file.unlink(missing_ok=True)


def class_names(ctx: JobContext, labels: dict[str, Any] | None) -> list[str] | None:
    """The class names in the definition's ``labels`` file; None without ``labels``."""
    if not labels:
        return None
    path = ctx.confined(str(labels.get("file", "data/labels.txt")), "labels")
    if not path.is_file():
        raise JobFailed(f"labels: {labels.get('file')} is not in the dataset")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return [line.split(",", 1)[1].strip() for line in text.splitlines()[1:] if "," in line]
    if labels.get("format") == "pbtxt" or path.suffix == ".pbtxt":  # TF OD label map: item { name: 'x' }
        return re.findall(r"name:\s*['\"]([^'\"]*)['\"]", text)
    return [name.strip() for name in text.replace("\n", ",").split(",") if name.strip()]
