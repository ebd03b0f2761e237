"""dogs_dummy train → predict through the toolkit alone, on a loopback server.

``train_job`` and ``predict_job`` are the glue a handler adds (the job context will
supply `access`, the directories, `upload` and progress): the test shows the toolkit's
parts fit together and that the outputs are those the launcher uploads.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path
from typing import Any

from ufdl_node.work import dogs_dummy
from ufdl_node.work.datasets import clear_annotations, fetch_dataset, store_categories
from ufdl_node.work.outputs import upload_metadata, upload_zip
from ufdl_node.work.records import fetch_model
from ufdl_node.work.server import ServerAccess

from .conftest import FakeUfdl, Harness

IMAGES = {f"dog{i}.jpg": b"D%d" % i for i in range(4)} | {f"cat{i}.jpg": b"C%d" % i for i in range(4)}
LABELS = {name: ["dog" if name.startswith("dog") else "cat"] for name in IMAGES}


class Outputs:
    """Uploads stored as job outputs of job `job` on the fake server (pk by pk)."""

    def __init__(self, state: FakeUfdl, job: int) -> None:
        self.state, self.job = state, job
        self.by_name: dict[str, tuple[int, str, bytes]] = {}

    async def __call__(self, name: str, type_: str, path: Path) -> None:
        pk = len(self.state.outputs) + 1
        self.state.outputs[pk] = (self.job, name, type_, path.read_bytes())
        self.by_name[name] = (pk, type_, path.read_bytes())


async def train_job(access: ServerAccess, work: Path, cache: Path, params: dict[str, Any],
                    upload: Outputs) -> None:
    ds = await fetch_dataset(access, 1, dogs_dummy.DATASET_TYPE, dest=work / "data", cache_dir=cache)
    truth = ds.labels()  # no launcher table here: the dataset's own labels are the truth
    result = dogs_dummy.train(ds.labels(), truth, params["factor"])
    model = dogs_dummy.write_model(result, work / "model")
    await upload_zip(upload, "model", dogs_dummy.MODEL_TYPE, [model], work / "model.zip")
    await upload_metadata(upload, result.metadata(params["frontend_metadata"]), work / "metadata.json")


async def predict_job(access: ServerAccess, work: Path, cache: Path, model_pk: int,
                      params: dict[str, Any], upload: Outputs) -> None:
    ds = await fetch_dataset(access, 1, dogs_dummy.DATASET_TYPE, dest=work / "in", cache_dir=cache)
    truth = ds.labels()  # read before the launcher's clear wipes them
    await clear_annotations(access, ds.pk)
    model = await fetch_model(access, model_pk, work)
    assert model.directory is not None
    accuracy = dogs_dummy.read_model((model.directory / dogs_dummy.MODEL_MEMBER).read_text())
    result = dogs_dummy.predict(ds.files, truth, accuracy, per_class=params["per_class"],
                                rng=random.Random(5))
    written = dogs_dummy.write_predictions(result, work / "out")
    await upload_zip(upload, "predictions", dogs_dummy.PREDICTIONS_TYPE, written, work / "predictions.zip")
    if params["store_predictions"]:
        await store_categories(access, ds.pk, result.labels_to_store())
    await upload_metadata(upload, result.metadata(params["frontend_metadata"]), work / "metadata.json")


async def test_train_then_predict_gives_the_launchers_outputs(ufdl: Harness, tmp_path: Path) -> None:
    """Train uploads a model zip and metadata; predict reads that model and labels the dataset."""
    ufdl.state.add_dataset(1, "pets", IMAGES, categories=LABELS)
    access = ufdl.access()
    train_out = Outputs(ufdl.state, job=10)
    await train_job(access, tmp_path / "train", tmp_path / "cache",
                    {"factor": 4, "delay": 0.0, "frontend_metadata": {"ui": 1}}, train_out)
    model_pk, model_type, model_zip = train_out.by_name["model"]
    assert model_type == "Model<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>"
    with zipfile.ZipFile(io.BytesIO(model_zip)) as zf:
        assert zf.namelist() == ["model"] and zf.read("model") == b"1.0"
    meta = json.loads(train_out.by_name["metadata"][2])
    assert meta["frontend"] == {"ui": 1} and meta["job"]["score"] == 8 and meta["job"]["accuracy"] == 1.0

    predict_out = Outputs(ufdl.state, job=11)
    await predict_job(access, tmp_path / "predict", tmp_path / "cache", model_pk,
                      {"per_class": True, "store_predictions": True, "frontend_metadata": None}, predict_out)
    assert predict_out.by_name["predictions"][1] == "BLOB<'txt'>"
    with zipfile.ZipFile(tmp_path / "predict" / "predictions.zip") as zf:
        assert zf.read("dog0.txt") == b"dog" and len(zf.namelist()) == 8
    assert json.loads(predict_out.by_name["metadata"][2])["job"]["num_correct"] == 8
    assert ufdl.state.count("DELETE", "/v1/datasets/1/clear$") == 1
    assert ufdl.state.categories[1] == LABELS  # cleared, then refilled with the (all correct) predictions
    assert ufdl.state.count("GET", "/files/") == 8  # the predict job's dataset came from the cache
