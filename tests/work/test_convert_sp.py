"""to-coqui-stt-sp against the Coqui STT format wai.annotations writes: per split, the audio
files and a CSV wav_filename,wav_filesize,transcript of the transcribed ones."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ufdl_node.work.convert import check_domain, plan_layout, write_layout
from ufdl_node.work.wai_options import ConversionError, parse, split_schedule

COQUI_TRAIN = ["to-coqui-stt-sp", "-o", "samples.csv", "--split-names", "train", "test", "val",
               "--split-ratios", "70", "15", "15"]
AUDIO = {f"s{n}.wav": b"RIFF" + b"x" * n for n in range(5)}
SAID = {"s0.wav": {"transcription": "hello"}, "s1.wav": {"transcription": 'say "hi", then go'},
        "s3.wav": {"transcription": "three"}, "s4.wav": {}}


def convert(tmp_path: Path, args: list[str]) -> list[str]:
    sources = {}
    for name, data in AUDIO.items():
        sources[name] = tmp_path / "src" / name
        sources[name].parent.mkdir(parents=True, exist_ok=True)
        sources[name].write_bytes(data)
    plan = parse(args)
    check_domain(plan, "sp", "Speech")
    return write_layout(plan_layout(plan, sorted(AUDIO), SAID), sources, tmp_path / "job")


def test_the_stock_train_defaults(tmp_path: Path) -> None:
    """Per split, the audio files and samples.csv with the header, the file's size in bytes and
    its transcript (quoted only where needed, '\\n' line ends); an untranscribed file has no row."""
    written = convert(tmp_path, COQUI_TRAIN)
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    assert cycle[:5] == ["train", "train", "train", "test", "val"]
    assert written == ["test/s3.wav", "test/samples.csv", "train/s0.wav", "train/s1.wav", "train/s2.wav",
                       "train/samples.csv", "val/s4.wav"]  # val's only file has no transcript: no CSV
    text = (tmp_path / "job" / "train" / "samples.csv").read_bytes()
    assert text == b'wav_filename,wav_filesize,transcript\ns0.wav,4,hello\ns1.wav,5,"say ""hi"", then go"\n'
    with (tmp_path / "job" / "test" / "samples.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"wav_filename": "s3.wav", "wav_filesize": "7", "transcript": "three"}]


def test_the_stock_predict_defaults_and_annotations_only(tmp_path: Path) -> None:
    """Without splits, the files beside samples.csv; --annotations-only writes the CSV alone."""
    assert convert(tmp_path / "p", ["to-coqui-stt-sp", "-o", "samples.csv"]) == \
        [*sorted(AUDIO), "samples.csv"]
    only = ["to-coqui-stt-sp", "-o", "in/s.csv", "--annotations-only"]
    assert convert(tmp_path / "a", only) == ["in/s.csv"]


def test_transcriptions_of_the_wrong_shape_are_refused() -> None:
    """Anything but {file: {"transcription": text}}: one line naming the file."""
    with pytest.raises(ConversionError, match=r"the transcription of 's0\.wav' is not"):
        plan_layout(parse(["to-coqui-stt-sp", "-o", "x.csv"]), ["s0.wav"], {"s0.wav": {"text": "hi"}})
