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

from ufdl_node.registry import load_module_file
from ufdl_node.settings import SHIPPED_HANDLERS_DIR
from ufdl_node.work.datasets import fetch_dataset
from ufdl_node.work.labels import store_predictions
from ufdl_node.work.outputs import upload_metadata, upload_zip
from ufdl_node.work.records import fetch_model
from ufdl_node.work.server_access import ServerAccess

from .conftest import FakeUfdl, Harness

dogs_dummy = load_module_file(SHIPPED_HANDLERS_DIR / "_dogs_dummy_model.py")  # beside its handler

IMAGES = {f"dog{i}.jpg": b"D%d" % i for i in range(4)} | {f"cat{i}.jpg": b"C%d" % i for i in range(4)}
LABELS = {name: ["dog" if name.startswith("dog") else "cat"] for name in IMAGES}
NOTES = {"notes.txt": ["keep-me"]}  # a label on a file that is no image: no predict touches it


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
    truth = ds.labels()  # read before the predictions change them
    model = await fetch_model(access, model_pk, work)
    assert model.directory is not None
    accuracy = dogs_dummy.read_model((model.directory / dogs_dummy.MODEL_MEMBER).read_text())
    result = dogs_dummy.predict(ds.files, truth, accuracy, per_class=params["per_class"],
                                rng=random.Random(5))
    written = dogs_dummy.write_predictions(result, work / "out")
    await upload_zip(upload, "predictions", dogs_dummy.PREDICTIONS_TYPE, written, work / "predictions.zip")
    if params["store_predictions"]:
        await store_predictions(access, ds.pk, result.labels_to_store())
    await upload_metadata(upload, result.metadata(params["frontend_metadata"]), work / "metadata.json")


async def test_train_then_predict_gives_the_launchers_outputs(ufdl: Harness, tmp_path: Path) -> None:
    """Train uploads a model zip and metadata; predict reads that model, labels the dataset
    and stores the labels back with the real calls (PATCH add/remove), clearing nothing."""
    ufdl.state.add_dataset(1, "pets", IMAGES | {"notes.txt": b"N"}, categories=LABELS | NOTES)
    access = ufdl.access()
    train_out = Outputs(ufdl.state, job=10)
    await train_job(access, tmp_path / "train", tmp_path / "cache",
                    {"factor": 16, "delay": 0.0, "frontend_metadata": {"ui": 1}}, train_out)
    model_pk, model_type, model_zip = train_out.by_name["model"]
    assert model_type == "Model<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>"
    with zipfile.ZipFile(io.BytesIO(model_zip)) as zf:
        assert zf.namelist() == ["model"] and zf.read("model") == b"0.5"  # 8 right / factor 16
    meta = json.loads(train_out.by_name["metadata"][2])
    assert meta["frontend"] == {"ui": 1}
    assert list(meta["job"]) == ["executor", "num_files", "factor", "score", "files", "accuracy", "model"]
    assert (meta["job"]["executor"], meta["job"]["score"], meta["job"]["accuracy"], meta["job"]["model"]) \
        == ("train", 8, 1.0, 0.5)

    predict_out = Outputs(ufdl.state, job=11)
    await predict_job(access, tmp_path / "predict", tmp_path / "cache", model_pk,
                      {"per_class": True, "store_predictions": True, "frontend_metadata": None}, predict_out)
    assert predict_out.by_name["predictions"][1] == "BLOB<'txt'>"
    with zipfile.ZipFile(tmp_path / "predict" / "predictions.zip") as zf:
        assert len(zf.namelist()) == 8
        predicted = {f"{name[:-4]}.jpg": zf.read(name).decode() for name in zf.namelist()}
    meta = json.loads(predict_out.by_name["metadata"][2])
    assert list(meta["job"]) == ["executor", "model", "num_files", "per_class", "files", "num_correct",
                                 "accuracy"]
    assert (meta["job"]["executor"], meta["job"]["model"], meta["job"]["num_correct"]) == ("predict", 0.5, 4)
    assert meta["job"]["accuracy"] == 0.5
    assert ufdl.state.count("DELETE", "/clear$") == 0 and ufdl.state.count("POST", "/categories$") == 0
    # each image holds just its prediction (4 of them wrong); the note's label is kept
    assert ufdl.state.categories[1] == {name: [label] for name, label in predicted.items()} | NOTES
    assert ufdl.state.count("GET", "/files/") == 9  # the predict job's dataset came from the cache


async def test_a_second_predict_replaces_the_first_ones_labels(ufdl: Harness, tmp_path: Path) -> None:
    """Two predicts in a row: after each, every image holds exactly that predict's label
    (nothing duplicated, nothing lost), and the labels of other files stay."""
    ufdl.state.add_dataset(1, "pets", IMAGES | {"notes.txt": b"N"}, categories=LABELS | NOTES)
    train_out = Outputs(ufdl.state, job=10)
    await train_job(ufdl.access(), tmp_path / "t", tmp_path / "cache",
                    {"factor": 16, "delay": 0.0, "frontend_metadata": None}, train_out)
    params = {"per_class": False, "store_predictions": True, "frontend_metadata": None}
    for run in (1, 2):
        out = Outputs(ufdl.state, job=10 + run)
        await predict_job(ufdl.access(), tmp_path / f"p{run}", tmp_path / "cache",
                          train_out.by_name["model"][0], params, out)
        files = json.loads(out.by_name["metadata"][2])["job"]["files"]
        assert ufdl.state.categories[1] == {f: [v["predicted_label"]] for f, v in files.items()} | NOTES
    # the second run changed some labels: the old ones were removed, not left beside the new
    assert any(body.get("method") == "remove" for body in ufdl.state.bodies)
    assert all(body.get("method") in ("add", "remove") for body in ufdl.state.bodies)
