"""Speech writer: ``to-coqui-stt-sp``, as wai.annotations' coqui plugin writes it, from the
transcriptions the server gives (``GET /v1/speech/datasets/{pk}/transcriptions``:
``{file: {"transcription": text}}``).

``to-coqui-stt-sp -o FILE [--annotations-only] [splits]``: per split, the audio files in
``<dir of FILE>/<split>/`` and ``<dir of FILE>/<split>/<name of FILE>``, a CSV
(``wav_filename,wav_filesize,transcript``, ``\\n`` line ends, fields quoted only where
needed) with a row per transcribed file; a split without one gets no CSV. The file sizes
are read from the files on disk when the CSV is written (:data:`.layouts.Streamer`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .layouts import Layout, Streamer, join, output_file, split_cycle, split_names
from .wai_options import ConversionError, Stage, shown

HEADER = ("wav_filename", "wav_filesize", "transcript")


def read_sp(files: Sequence[str], annotations: Any) -> dict[str, str | None]:
    """Each file's transcription (None without one) from ``{file: {"transcription"}}``."""
    if not isinstance(annotations, dict):
        raise ConversionError("the speech transcriptions are not {file: {\"transcription\": text}}")
    read: dict[str, str | None] = {}
    for name in files:
        entry = annotations.get(name)
        text = entry.get("transcription") if isinstance(entry, dict) else None
        if entry is not None and entry != {} and not isinstance(text, str):
            raise ConversionError(f"the transcription of {shown(name)} is not {{\"transcription\": text}}")
        read[name] = text
    return read


def _csv_writer(rows: list[tuple[str, str]]) -> Streamer:
    """A streamer writing the CSV of `rows` ((dataset name, transcript)), sizes from disk."""
    def write(target: Path, sources: Mapping[str, Path]) -> None:
        with target.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, delimiter=",", quotechar='"', lineterminator="\n",
                                quoting=csv.QUOTE_MINIMAL)
            writer.writerow(HEADER)
            for name, text in rows:
                writer.writerow((name, sources[name].stat().st_size, text))
    return write


def to_coqui_stt_sp(stage: Stage, files: Sequence[str], data: Mapping[str, str | None]) -> Layout:
    """Per split, its audio files and a CSV of their transcriptions."""
    folder, csv_name = output_file(stage)
    cycle = split_cycle(stage)
    rows: dict[str, list[tuple[str, str]]] = {split: [] for split in split_names(stage)}
    paths: dict[str, str] = {}
    for position, name in enumerate(files):
        split = cycle[position % len(cycle)]
        if not stage.flag("annotations_only"):
            paths[name] = join(folder, split, name)
        text = data[name]
        if text is not None:
            rows[split].append((name, text))
    streamed = {join(folder, split, csv_name): _csv_writer(found) for split, found in rows.items() if found}
    return Layout(paths, {}, tuple(join(folder, split) for split in rows), streamed)
