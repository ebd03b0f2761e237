"""Each stock framework family end to end with its stand-in image, through the daemon on the
embedded server: Train → the model output of the stock type → Predict on it → predictions
uploaded and, with store_predictions, written back into the dataset.

One test per family (TensorFlow image classification, Coqui STT, MMDetection, YOLACT++,
TensorFlow object detection); the stand-ins are in :mod:`.standins_stock`.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from ..handlers.stockrun import StockRun, stock_run
from .conftest import unavailable
from .standins import write_labelled_images
from .standins_stock import build_stock_standin

NODE = {"docker_template_dirs": [SHIPPED_HANDLERS_DIR / "docker.d"], "docker_env": {"STANDIN_EPOCH_S": "0"}}


@pytest.fixture
def docker_ok(docker_problem: str | None) -> None:
    if docker_problem:
        unavailable(docker_problem)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


async def test_tensorflow_image_classification(tmp_path: Path, docker_ok: None) -> None:
    image = await build_stock_standin("tensorflow-ic")
    write_labelled_images(tmp_path / "pets", {"cat": 3, "dog": 3})
    async with stock_run(tmp_path, **NODE) as ufdl:
        train = await ufdl.finished("tensorflow_1_14_image_class_train", {"dataset": str(tmp_path / "pets")},
                                    docker_image=image, steps=20)
        model = ufdl.output(train, "model")
        assert model["type"] == "Model<Domain<'Image Classification'>, Framework<'tensorflow', '1.14'>>"
        zipped = members(await ufdl.download(train, "model"))
        assert sorted(zipped) == ["graph.pb", "info.json", "labels.txt", "model.tflite"]
        assert zipped["labels.txt"].decode().split() == ["cat", "dog"]
        pk = StockRun.dataset_pk(train)
        predict = await ufdl.finished("tensorflow_1_14_image_class_predict", {"dataset": pk, "model": model["pk"]},
                                      docker_image=image, store_predictions=True, clear_dataset=True)
        csvs = members(await ufdl.download(predict, "predictions"))
        assert len(csvs) == 6 and csvs["dog-000.csv"].decode().splitlines()[:2] == ["label,probability", "cat,0.80"]
        labels = await ufdl.admin.request("GET", f"/v1/classify/datasets/{pk}/categories")
        assert labels == {f"{c}-{n:03d}.png": ["cat"] for c in ("cat", "dog") for n in range(3)}
        meta = json.loads((await ufdl.admin.request("GET", f"/v1/classify/datasets/{pk}/metadata/dog-001.png"))["metadata"])
        assert meta["confidence"]["top_score"] == 0.8
