"""The stock dogs_dummy handlers through `ufdl-node dry-run` (real processes), on a folder of images."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from ..cli.conftest import ufdl_node
from .images import image_folder

pytestmark = pytest.mark.slow
SAVED = re.compile(r"saved (\S+) \((\d+) bytes\)")


def saved(stdout: str) -> dict[str, Path]:
    """The files a dry-run says it saved, by output name (the part before the first dot)."""
    return {Path(m.group(1)).name.split(".")[0]: Path(m.group(1)) for m in SAVED.finditer(stdout)}


def dry_run(cwd: Path, *args: str) -> dict[str, Path]:
    """`ufdl-node dry-run ARGS` in `cwd` (with frontend_metadata, which the stock templates require
    as the real server's do); it must finish; the files it saved."""
    result = ufdl_node("dry-run", *args, "--param", "frontend_metadata=null", "--timeout", "60", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"job \d+: FINISHED", result.stdout), result.stdout
    return {name: cwd / path for name, path in saved(result.stdout).items()}


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """Five dogs and three cats, one sub-folder per label."""
    return image_folder(tmp_path / "pets", {"dog": 5, "cat": 3})


def test_train_dry_run_on_an_image_folder_saves_the_model_zip_and_metadata(pets: Path,
                                                                           tmp_path: Path) -> None:
    """dry-run train --input dataset=DIR: a model zip holding accuracy = images / factor, and metadata."""
    outputs = dry_run(tmp_path, "dogs_dummy_image_class_train", "--input", f"dataset={pets}",
                      "--param", "factor=16")
    with zipfile.ZipFile(outputs["model"]) as zf:
        assert zf.namelist() == ["model"] and zf.read("model") == b"0.5"
    meta = json.loads(outputs["metadata"].read_text())
    assert meta["frontend"] is None
    assert (meta["job"]["num_files"], meta["job"]["score"], meta["job"]["factor"]) == (8, 8, 16)
    assert meta["job"]["files"]["dog3.png"] == {"label": "dog", "correct_label": "dog", "correct": True}


def test_predict_dry_run_on_the_trained_model_saves_the_predictions(pets: Path, tmp_path: Path) -> None:
    """dry-run predict --input model=<the train's model file> --input dataset=DIR: a label per image."""
    model = dry_run(tmp_path, "dogs_dummy_image_class_train", "--input", f"dataset={pets}",
                    "--param", "factor=2")["model"]
    outputs = dry_run(tmp_path, "dogs_dummy_image_class_predict", "--input", f"model={model}",
                      "--input", f"dataset={pets}")
    with zipfile.ZipFile(outputs["predictions"]) as zf:
        predictions = {name: zf.read(name).decode() for name in zf.namelist()}
    expected = {f"{label}{i}.txt": label for label, n in (("dog", 5), ("cat", 3)) for i in range(n)}
    assert predictions == expected
    meta = json.loads(outputs["metadata"].read_text())["job"]
    assert (meta["accuracy"], meta["num_files"], meta["num_correct"]) == (1.0, 8, 8)


def test_handlers_lists_the_dogs_dummy_handlers() -> None:
    """`ufdl-node handlers` shows both stock templates from handlers/dogs_dummy.py."""
    result = ufdl_node("handlers", "--handlers-dir", str(Path(__file__).parents[2] / "handlers"))
    assert result.returncode == 0, result.stderr
    for template in ("dogs_dummy_image_class_train", "dogs_dummy_image_class_predict"):
        assert f"{template}: templates {template}" in result.stdout
    assert "handlers/dogs_dummy.py" in result.stdout


def test_predict_dry_run_with_a_model_file_that_does_not_exist_exits_2(pets: Path, tmp_path: Path) -> None:
    """--input model=FILE where FILE is missing: exit 2 with one line, before any job runs."""
    result = ufdl_node("dry-run", "dogs_dummy_image_class_predict", "--input", "model=gone.zip",
                       "--input", f"dataset={pets}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == ("ufdl-node: dry-run: --input model=gone.zip: no such file, and not "
                                     "job:N[/NAME] nor the pk of a job output")
