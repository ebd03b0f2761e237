"""The stock Weka spectrum templates end to end: train → model → predict → labels written back.

By default against a stand-in of python-weka-wrapper3 (``standin_weka/``: the calls the
template's script makes, a nearest-centroid classifier under the Weka class name);
``UFDL_TEST_WEKA_PYTHON`` names a Python with the real python-weka-wrapper3 and a Java runtime
to run the same test against Weka itself (done once: J48, every assertion held).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ufdl_node.protocol import display_phase

from .stockrun import StockRun, stock_run

REAL_WEKA_PYTHON = os.environ.get("UFDL_TEST_WEKA_PYTHON")
STANDIN = Path(__file__).with_name("standin_weka")


def weka_python(tmp_path: Path) -> str:
    """The real Weka's Python when given, else this Python with the stand-in package first."""
    if REAL_WEKA_PYTHON:
        return REAL_WEKA_PYTHON
    wrapper = tmp_path / "weka-python"
    python = shlex.quote(sys.executable)
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(STANDIN))} exec {python} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def has_weka(python: str) -> bool:
    try:
        return (
            subprocess.run([python, "-c", "import weka.core.jvm"], capture_output=True, timeout=60).returncode
            == 0
        )
    except OSError:
        return False


def spectrum(peak: float) -> str:
    """An ADAMS .spec with a report and 20 points peaking at wave number `peak`."""
    points = "\n".join(f"{w},{1.0 / (1 + (w - peak) ** 2):.6f}" for w in range(20))
    return f"# Sample ID=x\n# Instrument=test\nwaveno,amplitude\n{points}\n"


def spectra_folder(root: Path) -> Path:
    for label, peak in (("low", 3.0), ("high", 15.0)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{label}{i}.spec").write_text(spectrum(peak + i * 0.3))
    return root


@pytest.mark.skipif(
    REAL_WEKA_PYTHON is not None and not has_weka(REAL_WEKA_PYTHON),
    reason="UFDL_TEST_WEKA_PYTHON has no python-weka-wrapper3",
)
async def test_train_predict_and_store_the_labels(tmp_path: Path) -> None:
    async with stock_run(tmp_path, weka_python=weka_python(tmp_path)) as ufdl:
        data = spectra_folder(tmp_path / "spectra")
        train = await ufdl.finished(
            "weka_spec_class_train",
            {"dataset": str(data)},
            classname="weka.classifiers.trees.J48",
            options=["-C", "0.25", "-M", "1"],
        )
        model = ufdl.output(train, "model")
        assert model["type"] == "Model<Domain<'Spectrum Classification'>, Framework<'weka', 'classifier'>>"
        with zipfile.ZipFile(await ufdl.download(train, "model")) as zf:
            assert sorted(zf.namelist()) == ["labels", "model"]
            assert zf.read("labels").decode().splitlines() == ["high", "low"]
        pk = StockRun.dataset_pk(train)
        await ufdl.admin.request(
            "PATCH",
            f"/v1/spectra/datasets/{pk}/categories",  # one wrong label
            json={"method": "add", "images": ["low0.spec"], "categories": ["odd"]},
        )
        predict = await ufdl.finished(
            "weka_spec_class_predict",
            {"dataset": pk, "model": model["pk"]},
            store_predictions=True,
            clear_dataset=True,
        )
        assert ufdl.output(predict, "predictions")["type"] == "BLOB<'txt'>"
        with zipfile.ZipFile(await ufdl.download(predict, "predictions")) as zf:
            assert len(zf.namelist()) == 8 and zf.read("high2.txt") == b"high"
        labels = await ufdl.admin.request("GET", f"/v1/spectra/datasets/{pk}/categories")
        assert labels == {f"{c}{i}.spec": [c] for c in ("low", "high") for i in range(4)}


async def test_without_weka_the_job_fails_in_one_line(tmp_path: Path) -> None:
    async with stock_run(tmp_path, weka_python=sys.executable) as ufdl:
        if has_weka(sys.executable):
            pytest.skip("the node's own Python has python-weka-wrapper3")
        job = await ufdl.job("weka_spec_class_train", {"dataset": str(spectra_folder(tmp_path / "s"))})
        assert str(display_phase(job)) == "ERRORED"
        reason = str(job["error_reason"])
        assert "\n" not in reason and "has no python-weka-wrapper3" in reason, reason


async def test_a_dataset_without_labelled_spectra_fails_in_one_line(tmp_path: Path) -> None:
    async with stock_run(tmp_path, weka_python=sys.executable) as ufdl:
        folder = tmp_path / "s"
        (folder / "x").mkdir(parents=True)
        (folder / "x" / "notes.txt").write_text("no spectrum")
        job = await ufdl.job("weka_spec_class_train", {"dataset": str(folder)})
        assert str(display_phase(job)) == "ERRORED"
        assert (
            job["error_reason"]
            == f"dataset {StockRun.dataset_pk(job)} has no labelled .spec file to train on"
        )
