"""Video frames for object-detection conversions, as ``from-ufdl-od --unlabelled`` takes them.

The stock launcher passes a predict template's ``unlabelled`` parameter to wai.annotations'
UFDL reader (``ufdl-annotations-plugin``, ``UFDLImageObjectDetectionReader``) as
``--unlabelled SPEC...``. A dataset file whose type has a ``length`` (seconds) is a video;
the reader turns it into JPEG frames, one for each time of

- every spec whose ``GLOB@`` (``fnmatch``, case-sensitive; ``*`` when left out: everything up
  to the spec's last ``@``) matches the video's name: ``every:STEP[+OFFSET|-OFFSET]``
  (``OFFSET``, ``OFFSET + STEP``, ... up to the length, both ends included; a negative step
  counts back from the length) or ``TIME[,TIME]*`` (those within ``[0, length]``), steps,
  offsets and times read as exact fractions (``0.1``, ``1/3``);
- and every annotation's ``time`` (a labelled frame carries its boxes);

named ``<video>@|frametime=<time>|.jpg`` (the time as Python prints a float: ``0.0``,
``1.5``), in the video's place in the layout. A video without a time to take (no spec matches,
no annotation) is left out, as it is there. The frame at time ``t`` is the one shown then (the
last whose start is at or before ``t``; past the end, the last frame), as moviepy's
``save_frame`` gives it. Frames come in time order (the reader's is a set's).

Differences, both where wai.annotations fails: ``every:STEP-OFFSET`` with a positive step
starts at ``-OFFSET`` modulo the step (the reader divides by zero there); a spec it cannot
read fails the conversion in one line. Decoding uses PyAV (FFmpeg's libraries in its wheel)
instead of moviepy's ``ffmpeg`` process, one pass over each video whose frames are written
as they are decoded; a video that cannot be decoded is a :class:`ConversionError`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .wai_options import ConversionError, shown

_SPEC = re.compile(r"^((?P<glob>.*)@)?((every:(?P<step>-?[^+-]*)(?P<offset>[+-].*)?)"
                   r"|(?P<times>[^,]*(,[^,]*)*))$")
_FORM = "[GLOB@](every:STEP[+/-OFFSET] | TIME[,TIME]*)"
_EPSILON = 1e-6  # seconds: a frame starting this close after `t` is still the frame at `t`


@dataclass(frozen=True)
class FrameSpec:
    """One ``--unlabelled`` value: the videos it is for, and its times (an every-step or a list)."""

    text: str
    glob: str
    step: Fraction | None
    offset: Fraction
    times: tuple[Fraction, ...] = ()

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.glob)

    def times_in(self, length: float) -> Iterator[float]:
        """The spec's times within a video of `length` seconds."""
        if self.step is None:
            yield from (float(t) for t in self.times if 0 <= t <= length)
            return
        step, start = self.step, self.offset
        at: Fraction | float = start % step + length if step < 0 and start > 0 else \
            start + length if step < 0 else start % step if start < 0 else start
        while 0 <= at <= length:
            yield float(at)
            at += step


def _fraction(text: str, spec: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ConversionError(f"unlabelled {shown(spec)}: {shown(text)} is not a number of seconds "
                              f"(give {_FORM})") from None


def parse_spec(text: str) -> FrameSpec:
    """One ``--unlabelled`` value; ConversionError (one line) when it is not one."""
    match = _SPEC.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConversionError(f"unlabelled {shown(str(text))}: not {_FORM}")
    glob = match["glob"] if match["glob"] is not None else "*"
    if match["step"] is not None:
        step = _fraction(match["step"], text)
        if step == 0:
            raise ConversionError(f"unlabelled {shown(text)}: the step cannot be zero")
        offset = _fraction(match["offset"], text) if match["offset"] else Fraction(0)
        return FrameSpec(text, glob, step, offset)
    times = tuple(_fraction(t, text) for t in match["times"].split(","))
    return FrameSpec(text, glob, None, Fraction(0), times)


def parse_specs(values: Sequence[str]) -> tuple[FrameSpec, ...]:
    """Every value of a template's ``unlabelled``, checked before anything is fetched."""
    return tuple(parse_spec(v) for v in values)


def frame_name(video: str, time: float) -> str:
    """The name wai.annotations gives the frame of `video` at `time` seconds."""
    return f"{video}@|frametime={float(time)}|.jpg"


def frame_times(specs: Sequence[FrameSpec], name: str, length: float,
                labelled: Sequence[float]) -> list[float]:
    """The times to take from video `name` (`length` seconds): the specs' and the labelled ones."""
    wanted = {t for spec in specs if spec.matches(name) for t in spec.times_in(length)}
    wanted.update(float(t) for t in labelled)
    return sorted(wanted)


# -- decoding --------------------------------------------------------------------------------


def extract_frames(video: Path, name: str, targets: Sequence[tuple[float, Path]]) -> None:
    """Write the frame of `video` (the dataset's file `name`) at each time of `targets`
    (sorted) as a JPEG at its path, in one pass over the video; blocking (run it in a
    thread). ConversionError naming the file when it cannot be decoded."""
    import av  # FFmpeg's libraries: loaded only by a conversion that has videos

    if not targets:
        return
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise ConversionError(f"video {shown(name)} has no video stream")
            stream = container.streams.video[0]
            _write_frames(_timed(container.decode(stream)), targets, name)
    except av.FFmpegError as e:
        raise ConversionError(f"video {shown(name)} cannot be decoded: {shown(str(e))}") from None


def _timed(frames: Iterator[Any]) -> Iterator[tuple[float, Any]]:
    """Each decoded frame with its start in seconds from the first frame's."""
    first: float | None = None
    for index, frame in enumerate(frames):
        start = float(frame.time) if frame.time is not None else float(index)
        first = start if first is None else first
        yield start - first, frame


def _write_frames(frames: Iterator[tuple[float, Any]], targets: Sequence[tuple[float, Path]],
                  name: str) -> None:
    """The frame shown at each target's time (the last starting at or before it) encoded and
    written as it is found; the times past the last frame get the last frame."""
    pending = list(targets)
    shown_now: Any = None
    for start, frame in frames:
        while pending and shown_now is not None and start > pending[0][0] + _EPSILON:
            _save(shown_now, pending.pop(0)[1])
        if not pending:
            return
        shown_now = frame
    if shown_now is None:
        raise ConversionError(f"video {shown(name)} has no frames")
    for _, target in pending:
        _save(shown_now, target)


def _save(frame: Any, target: Path) -> None:
    """`frame` as a JPEG file at `target` (FFmpeg's MJPEG encoder: one packet, one JPEG)."""
    import av

    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frame.width, frame.height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    packets = [*encoder.encode(frame.reformat(format="yuvj420p")), *encoder.encode(None)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for packet in packets:
            out.write(bytes(packet))


def video_sources(frames: Mapping[str, Sequence[tuple[float, str]]], sources: Mapping[str, Path],
                  scratch: Path) -> dict[str, Path]:
    """Every frame of `frames` (video → [(time, frame name)]) extracted into `scratch` from the
    videos at `sources`: {frame name: its file}. Blocking."""
    made: dict[str, Path] = {}
    for number, (video, wanted) in enumerate(sorted(frames.items())):
        targets = [(time, scratch / str(number) / f"{index}.jpg") for index, (time, _) in enumerate(wanted)]
        extract_frames(sources[video], video, targets)
        made.update({frame: path for (_, frame), (_, path) in zip(wanted, targets, strict=True)})
    return made
