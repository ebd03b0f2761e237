"""What every writer of :mod:`.convert` shares: the :class:`Layout` it plans, and its helpers.

A writer (``to-subdir-ic``, ``to-yolo-od``...) is a pure function of its stage (the
parsed options), the dataset's file names (sorted: the order wai.annotations' stream
takes, so that a split is the same on every run) and the domain's reading of its
annotations (one entry per file). It returns a :class:`Layout`: where each dataset file
goes, the small files it makes (labels, annotation files: bytes), the large ones it
makes by reading the dataset's files one at a time (``streamed``: TFRecords, or a CSV
that needs the files' sizes) and the folders it makes even when empty. A video's frames
(:mod:`.videoframes`) are files of the layout like the dataset's own, named in ``frames``
by the video they come from. Nothing is read or written while planning;
:func:`.convert.write_layout` makes it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .wai_options import ConversionError, Stage, relative, shown, split_schedule

# Makes one file of the layout at its path from the dataset's files on disk (name → path),
# reading them one at a time. Blocking: it runs in the conversion's thread.
Streamer = Callable[[Path, Mapping[str, Path]], None]


@dataclass(frozen=True)
class Layout:
    """Where a conversion puts things: each dataset file's path in the directory (a file
    it leaves out is absent), the files it makes (path → bytes), the files it makes from
    the dataset's files at write time (path → streamer), the folders it makes even
    when nothing goes in them, and the frames taken from each video ({video: ((time,
    frame name), ...)}; a frame's place is in `paths`, like a file's)."""

    paths: dict[str, str]
    generated: dict[str, bytes]
    folders: tuple[str, ...] = ()
    streamed: dict[str, Streamer] = field(default_factory=dict, compare=False)
    frames: dict[str, tuple[tuple[float, str], ...]] = field(default_factory=dict)

    def files(self) -> list[str]:
        """Every file of the layout, sorted."""
        return sorted([*self.paths.values(), *self.generated, *self.streamed])

    def made(self) -> list[str]:
        """The files the conversion makes rather than links from the dataset's (generated,
        streamed, video frames)."""
        frames = {frame for taken in self.frames.values() for _, frame in taken}
        return [*self.generated, *self.streamed,
                *(path for name, path in self.paths.items() if name in frames)]


# A writer: (its stage, the dataset's files in order, the domain's reading of each file) → layout.
Writer = Callable[[Stage, Sequence[str], Mapping[str, Any]], Layout]


def join(*parts: str) -> str:
    """`parts` joined with '/', empty parts left out."""
    return "/".join(p for p in parts if p)


def output_dir(stage: Stage) -> str:
    """The folder of a writer whose -o names a folder ("" for the dataset's top)."""
    return relative(stage.output, f"{stage.name} -o")


def output_file(stage: Stage) -> tuple[str, str]:
    """A writer whose -o names a file: (its folder, its name), as wai.annotations splits it."""
    path = relative(stage.output, f"{stage.name} -o")
    folder, name = posixpath.split(path)
    return folder, name


def option_path(stage: Stage, key: str) -> str | None:
    """A path-valued option of `stage` made relative and checked (None when not given)."""
    value = stage.one(key)
    return None if value is None else relative(value, f"{stage.name} option {key.replace('_', '-')}")


def split_cycle(stage: Stage) -> list[str]:
    """The split of each slot of the writer's cycle ([""]: no splitting); file i goes to
    slot i % len(cycle), negatives included, as wai.annotations' SplitSink counts them."""
    names, ratios = stage.splits
    if not names:
        return [""]
    return split_schedule(names, ratios, interleave=not stage.flag("no_interleave"))


def split_names(stage: Stage) -> list[str]:
    """The split names ([""] when not splitting): every one gets its folders."""
    names, _ = stage.splits
    return list(names) or [""]


def stem(name: str) -> str:
    """A file name without its extension (``a/b.jpg`` → ``a/b``)."""
    return posixpath.splitext(name)[0]


def check_paths(files: Sequence[str], folders: Sequence[str]) -> None:
    """One name twice, or a file and a folder of one name, cannot both be in the layout."""
    files_at: set[str] = set()
    folders_at: set[str] = {f for folder in folders if folder for f in _parents(folder + "/x")}
    for path in files:
        parents = _parents(path)
        if path in files_at or path in folders_at or any(p in files_at for p in parents):
            raise ConversionError(f"the conversion would write {shown(path)} twice "
                                  "(or as a file and a folder)")
        files_at.add(path)
        folders_at.update(parents)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]
