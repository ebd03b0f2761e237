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
from .standins import build_standin, write_labelled_images
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
        train = await ufdl.finished(
            "tensorflow_1_14_image_class_train",
            {"dataset": str(tmp_path / "pets")},
            docker_image=image,
            steps=20,
        )
        model = ufdl.output(train, "model")
        assert model["type"] == "Model<Domain<'Image Classification'>, Framework<'tensorflow', '1.14'>>"
        zipped = members(await ufdl.download(train, "model"))
        assert sorted(zipped) == ["graph.pb", "info.json", "labels.txt", "model.tflite"]
        assert zipped["labels.txt"].decode().split() == ["cat", "dog"]
        pk = StockRun.dataset_pk(train)
        predict = await ufdl.finished(
            "tensorflow_1_14_image_class_predict",
            {"dataset": pk, "model": model["pk"]},
            docker_image=image,
            store_predictions=True,
            clear_dataset=True,
        )
        csvs = members(await ufdl.download(predict, "predictions"))
        assert len(csvs) == 6 and csvs["dog-000.csv"].decode().splitlines()[:2] == [
            "label,probability",
            "cat,0.80",
        ]
        labels = await ufdl.admin.request("GET", f"/v1/classify/datasets/{pk}/categories")
        assert labels == {f"{c}-{n:03d}.png": ["cat"] for c in ("cat", "dog") for n in range(3)}
        meta = json.loads(
            (await ufdl.admin.request("GET", f"/v1/classify/datasets/{pk}/metadata/dog-001.png"))["metadata"]
        )
        assert meta["confidence"]["top_score"] == 0.8


async def test_mmclassification_writes_the_labels_back(tmp_path: Path, docker_ok: None) -> None:
    """MMClassification 0.25.0 (its stand-in: one {label: score} JSON per image, the first class
    scored highest): Train → Predict with store_predictions and clear_dataset → every image of
    the dataset labelled with its most probable class (ic-json)."""
    image = await build_standin("mmclassification")
    write_labelled_images(tmp_path / "pets", {"cat": 2, "dog": 2})
    async with stock_run(tmp_path, **NODE) as ufdl:
        train = await ufdl.finished("mmclassification_0.25.0_resnet18_train",
                                    {"dataset": str(tmp_path / "pets")}, docker_image=image, epochs=2)
        model = ufdl.output(train, "model")
        framework = "Framework<'mmclassification', '0.25.0'>"
        assert model["type"] == f"Model<Domain<'Image Classification'>, {framework}>"
        pk = StockRun.dataset_pk(train)
        predict = await ufdl.finished("mmclassification_0.25.0_image_class_predict",
                                      {"dataset": pk, "model": model["pk"]}, docker_image=image,
                                      store_predictions=True, clear_dataset=True)
        predictions = members(await ufdl.download(predict, "predictions"))
        assert json.loads(predictions["dog-001.json"]) == {"cat": 0.90, "dog": 0.46}
        labels = await ufdl.admin.request("GET", f"/v1/classify/datasets/{pk}/categories")
        assert labels == {f"{c}-{n:03d}.png": ["cat"] for c in ("cat", "dog") for n in range(2)}


def wav(seconds: float = 0.1, rate: int = 8000) -> bytes:
    """A valid mono 16-bit PCM WAV of silence."""
    data = b"\0\0" * int(seconds * rate)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def targz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("version", ["1.3.0", "1.4.0"])
async def test_coqui_stt(tmp_path: Path, docker_ok: None, version: str) -> None:
    image = await build_stock_standin("coqui-stt")
    folder = tmp_path / "speech"
    folder.mkdir()
    texts = {f"s{n}.wav": f"hello number {n}" for n in range(10)}
    for name in texts:
        (folder / name).write_bytes(wav())
    (folder / "transcriptions.csv").write_text("".join(f"{n},{t}\n" for n, t in texts.items()))
    pretrained = targz(
        tmp_path / "checkpoint.tar.gz", {f"coqui-stt-{version}-checkpoint/best_dev-1.index": b"x"}
    )
    async with stock_run(tmp_path, **NODE) as ufdl:
        train = await ufdl.finished(
            f"coqui_stt-{version}-train",
            {"dataset": str(folder)},
            docker_image=image,
            pretrained_model=str(pretrained),
            epochs=2,
            export_quantize=True,
        )
        model = ufdl.output(train, "model")
        assert model["type"] == f"Model<Domain<'Speech'>, Framework<'coqui_stt', '{version}'>>"
        assert (await ufdl.download(train, "model")).read_bytes() == b"standin tflite quantize=true\n"
        pk = StockRun.dataset_pk(train)
        predict = await ufdl.finished(
            f"coqui_stt-{version}-predict",
            {"dataset": pk, "model": model["pk"]},
            docker_image=image,
            store_predictions=True,
        )
        txts = members(await ufdl.download(predict, "predictions_txt"))
        assert len(txts) == 10 and txts["s3.txt"] == b"standin transcript of s3"
        written = await ufdl.admin.request("GET", f"/v1/speech/datasets/{pk}/transcriptions")
        assert written == {n: {"transcription": f"standin transcript of {n[:-4]}"} for n in texts}


def png(width: int, height: int, seed: int) -> bytes:
    """A valid grey PNG of `width` x `height` (each `seed` a different file)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([seed % 256]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def od_folder(root: Path, count: int = 10) -> Path:
    """`count` 40x30 images with YOLO boxes of the labels 'car' and 'person' (labels.txt)."""
    root.mkdir()
    (root / "labels.txt").write_text("car\nperson\n")
    for n in range(count):
        (root / f"img{n}.png").write_bytes(png(40, 30, n))
        (root / f"img{n}.txt").write_text(f"{n % 2} 0.5 0.5 0.25 0.3\n")
    return root


async def predict_and_read(ufdl: StockRun, predict: str, trained: dict[str, Any], image: str,
                           count: int, meta_of: str) -> dict[str, Any]:
    """Predict with `predict` on `trained`'s dataset and model, with store_predictions and
    clear_dataset; check the -rois.csv of each of the `count` images, and return the boxes
    the dataset then holds and the metadata of image `meta_of`."""
    pk = StockRun.dataset_pk(trained)
    predicted = await ufdl.finished(
        predict,
        {"dataset": pk, "model": ufdl.output(trained, "model")["pk"]},
        docker_image=image,
        store_predictions=True,
        clear_dataset=True,
    )
    rois = members(await ufdl.download(predicted, "predictions_csv"))
    assert sorted(rois) == sorted(f"img{n}-rois.csv" for n in range(count))
    boxes = await ufdl.admin.request("GET", f"/v1/objdet/datasets/{pk}/annotations")
    meta = json.loads(
        (await ufdl.admin.request("GET", f"/v1/objdet/datasets/{pk}/metadata/{meta_of}"))["metadata"]
    )
    return {"boxes": boxes, "meta": meta}


async def od_family(
    tmp_path: Path,
    family: str,
    train: str,
    predict: str,
    *,
    weights: tuple[str, bytes, str] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Train `train` on an OD folder, predict with `predict` on the same dataset with
    store_predictions; the boxes the dataset then holds, and the train job's model zip.
    `weights`: (name, bytes, framework) of a pretrained-model record made first."""
    image = await build_stock_standin(family)
    async with stock_run(tmp_path, **NODE) as ufdl:
        if weights:
            params["pretrained_model"] = await ufdl.pretrained(
                weights[0], weights[1], "od", (weights[2], "2020")
            )
        trained = await ufdl.finished(
            train, {"dataset": str(od_folder(tmp_path / "od"))}, docker_image=image, **params
        )
        model = ufdl.output(trained, "model")
        framework = model["type"].split("Framework<", 1)[1]
        assert model["type"] == f"Model<Domain<'Object Detection'>, Framework<{framework}"
        found = await predict_and_read(ufdl, predict, trained, image, 10, "img4.png")
        return {**found, "model": members(await ufdl.download(trained, "model"))}


async def test_yolov5_writes_the_boxes_back(tmp_path: Path, docker_ok: None) -> None:
    """YOLOv5 (its stand-in writes one -rois.csv a image, a box of the first label scored 0.87):
    Train with the stock default pretrained model's record → Predict with store_predictions and
    clear_dataset → each image's box, label and score in the dataset (rois-csv)."""
    image = await build_standin("yolov5")
    async with stock_run(tmp_path, **NODE) as ufdl:
        weights = await ufdl.pretrained("yolov5m_v6.0", b"standin weights", "od", ("yolo", "v5"))
        folder = str(od_folder(tmp_path / "od", 4))
        trained = await ufdl.finished("yolo_v5_objectdetection-train", {"dataset": folder},
                                      docker_image=image, pretrained_model=weights, epochs=1)
        model = ufdl.output(trained, "model")
        assert model["type"] == "Model<Domain<'Object Detection'>, Framework<'yolo', 'v5'>>"
        found = await predict_and_read(ufdl, "yolo_v5_objectdetection-predict", trained, image, 4, "img2.png")
    assert sorted(found["boxes"]) == sorted(f"img{n}.png" for n in range(4))
    box = found["boxes"]["img2.png"]["annotations"]
    # x1, y1 of a ROI are inclusive (wai.annotations): 1..11 is 11 wide
    assert [(b["x"], b["y"], b["width"], b["height"], b["label"]) for b in box] == [(1, 2, 11, 11, "car")]
    assert found["meta"]["scores"] == [0.87]


def assert_boxes_written(found: dict[str, Any], label: str) -> None:
    assert sorted(found["boxes"]) == sorted(f"img{n}.png" for n in range(10))
    box = found["boxes"]["img4.png"]["annotations"]
    assert [(b["x"], b["y"], b["width"], b["height"], b["label"]) for b in box] == [(2, 3, 10, 11, label)]
    assert found["meta"]["scores"] == [0.75] and found["meta"]["confidence"]["score-dist-max"] == 0.75


@pytest.mark.parametrize(
    ("train", "predict"),
    [
        ("mmdetection_2020-03-01_faster_rcnn_r101_fpn_1x-train", "mmdetection_2020-03-01-predict"),
        ("mmdetection_2020-03-01_cuda10_mask_rcnn_r50_fpn_1x-train", "mmdetection_2020-03-01_cuda10-predict"),
    ],
)
async def test_mmdetection(tmp_path: Path, docker_ok: None, train: str, predict: str) -> None:
    found = await od_family(
        tmp_path,
        "mmdetection",
        train,
        predict,
        epochs=2,
        weights=("pretrained-weights", b"standin weights", "mmdetection"),
    )
    assert sorted(found["model"]) == ["config.py", "labels.txt", "latest.pth"]
    assert found["model"]["labels.txt"].decode().strip() == "car,person"
    assert_boxes_written(found, "car")


@pytest.mark.parametrize(
    "train",
    [
        "tensorflow_objectdetection_1_14_mask_rcnn_inception_v2_coco-train",  # its body's ${min-dimension}
        "tensorflow_objectdetection_1.14_faster_rcnn_resnet101-train",
    ],
)
async def test_tensorflow_object_detection(tmp_path: Path, docker_ok: None, train: str) -> None:
    pretrained = targz(
        tmp_path / "faster.tar.gz", {"faster_rcnn_resnet101_coco_2018_01_28/model.ckpt.index": b"x"}
    )
    image = await build_stock_standin("tensorflow-od")
    async with stock_run(tmp_path, **NODE) as ufdl:
        trained = await ufdl.finished(
            train,
            {"dataset": str(od_folder(tmp_path / "od"))},
            docker_image=image,
            pretrained_model=str(pretrained),
            num_train_steps=200,
        )
        model = ufdl.output(trained, "model")
        assert model["type"] == "Model<Domain<'Object Detection'>, Framework<'tensorflow', '1.14'>>"
        zipped = members(await ufdl.download(trained, "model"))
        assert sorted(zipped) == ["frozen_inference_graph.pb", "labels.pbtxt", "saved_model/saved_model.pb"]
        found = await predict_and_read(ufdl, "tensorflow_objectdetection_1.14-predict", trained, image, 10,
                                       "img4.png")
    assert_boxes_written(found, "car")


async def test_yolact(tmp_path: Path, docker_ok: None) -> None:
    found = await od_family(
        tmp_path,
        "yolact",
        "yolactpp_2020-02-11_resnet50-train",
        "yolactpp_2020-02-11-predict",
        weights=("resnet50-19c8e357", b"standin backbone", "yolact"),
    )
    assert sorted(found["model"]) == ["config.py", "labels.txt", "model_1_100.pth"]
    assert "'class_names': ('car','person')" in found["model"]["config.py"].decode()
    assert_boxes_written(found, "car")
