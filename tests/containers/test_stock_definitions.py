"""The shipped stock definitions run end to end with stand-in images (tests/containers/standins.py):
`ufdl-node dry-run` of a Train template on a folder of labelled images → the model output of
the stock type → a Predict dry-run on that model → predictions uploaded. And a container job's
progress moves while it runs, from a tqdm-style stand-in's \\r-joined lines."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ufdl_node.api import HandlerSpec, JobFailed, PluginError
from ufdl_node.api.definitions import load_definition
from ufdl_node.api.dockerinputs import _extract_pretrained
from ufdl_node.api.progressmatch import EpochProgress
from ufdl_node.settings import SHIPPED_HANDLERS_DIR
from ufdl_node.work.wai_options import STAGES, split_schedule

from .conftest import TEST_IMAGE, unavailable
from .standins import build_standin, write_labelled_images
from .test_docker_inputs import _docker_module

ROOT = Path(__file__).parents[2]
DOCKER_D = SHIPPED_HANDLERS_DIR / "docker.d"
MMCLS_MODEL_TYPE = "Model_Domain_Image_Classification_Framework_mmclassification_{}"  # as saved


async def dry_run(tmp_path: Path, *args: str, timeout_s: float = 240) -> tuple[int, str, Path]:
    """`ufdl-node dry-run ARGS` in a subprocess: exit code, output, and the run's directory."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ufdl_node", "dry-run", *args, "--out", str(out), cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode()
    runs = sorted(out.iterdir(), key=lambda p: p.stat().st_mtime) if out.is_dir() else []
    assert runs, text
    return int(proc.returncode or 0), text, runs[-1]


def _saved(run_dir: Path, name: str) -> Path:
    [path] = [p for p in run_dir.iterdir() if p.name.startswith(f"{name}.")]
    return path


def _expected_split(names: list[str]) -> dict[str, dict[str, int]]:
    """{split: {label: images}} as wai.annotations' cycle deals the sorted file names."""
    cycle = split_schedule(["train", "test", "val"], [70, 15, 15])
    counts: dict[str, dict[str, int]] = {s: {"cat": 0, "dog": 0} for s in ("train", "test", "val")}
    for i, name in enumerate(sorted(names)):
        counts[cycle[i % len(cycle)]][name.split("-")[0]] += 1
    return counts


@pytest.fixture
async def mmcls_image(docker_problem: str | None) -> str:
    if docker_problem:
        unavailable(docker_problem)
    return await build_standin("mmclassification")


@pytest.mark.parametrize(("version", "train", "predict"), [
    ("0.25.0", "mmclassification_0.25.0_resnet18_train", "mmclassification_0.25.0_image_class_predict"),
    ("0.23.1", "mmclassification_0.23.1_mobilenetv3_small_train", "mmclassification_0.23.1_predict"),
])
async def test_mmclassification_train_then_predict(tmp_path: Path, mmcls_image: str, version: str,
                                                   train: str, predict: str) -> None:
    """Train on a folder of labelled images: the container gets data/labels.txt and the 70/15/15
    split, the model zip (latest.pth, config.py, labels.txt) is saved with the stock model type;
    a Predict on that model uploads one <image>.json per image. The mobilenetv3 variant also
    fine-tunes a pretrained model given as a local file."""
    images = write_labelled_images(tmp_path / "dataset", {"cat": 10, "dog": 10})
    pretrained = tmp_path / "mobilenet.pth"
    pretrained.write_bytes(b"pretrained weights")
    extra = ["--param", f"pretrained_model={pretrained}"] if "mobilenet" in train else []

    code, text, run = await dry_run(tmp_path, train, "--input", "dataset=dataset",
                                    "--param", f"docker_image={mmcls_image}", "--param", "epochs=2", *extra)

    assert code == 0, text
    log = (run / "job.log").read_text()
    seen = {m.group(1): dict(re.findall(r"(\w+)=(\d+)", m.group(2)))
            for m in re.finditer(r"data_prefix /workspace/data/(\w+):(.*)", log)}
    assert seen == {split: {label: str(n) for label, n in counts.items()}
                    for split, counts in _expected_split([p.name for p in images]).items()}
    model = _saved(run, "model")
    assert model.name == f"model.{MMCLS_MODEL_TYPE.format(version)}"
    with zipfile.ZipFile(model) as zf:
        assert sorted(zf.namelist()) == ["config.py", "labels.txt", "latest.pth"]
        assert zf.read("labels.txt").decode().strip() == "cat,dog"
        assert "num_classes=2," in zf.read("config.py").decode()
        assert "epoch=2" in zf.read("latest.pth").decode()
        pretrained_config = "checkpoint='/workspace/models/pretrained.pth'" in zf.read("config.py").decode()
        assert pretrained_config == bool(extra)

    to_predict = write_labelled_images(tmp_path / "unseen", {"cat": 2, "dog": 1})
    # the stock default ["to-images-ic"]: the images land in prediction/in/ (wai.annotations' -o .)
    code, text, run = await dry_run(tmp_path, predict, "--input", f"model={model}", "--input",
                                    "dataset=unseen", "--param", f"docker_image={mmcls_image}")

    assert code == 0, text
    with zipfile.ZipFile(_saved(run, "predictions")) as zf:
        assert sorted(zf.namelist()) == sorted(f"{p.stem}.json" for p in to_predict)
        scores = json.loads(zf.read(f"{to_predict[0].stem}.json"))
        assert set(scores) == {"cat", "dog"} and scores["cat"] > scores["dog"]


async def test_predict_without_prediction_out_would_write_nothing_and_fails_in_one_line(
        tmp_path: Path, mmcls_image: str) -> None:
    """The stand-in, like mmcls_predict_poll, exits 0 when its output directory is missing; a
    definition without `dirs` then uploads nothing and the job fails in one line saying so."""
    definition = load_definition(DOCKER_D / "mmclassification_0.25.0_image_class_predict.toml")
    definition.pop("dirs")
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "nodirs.toml").write_text(_toml(definition | {"template": "nodirs"}))
    model = tmp_path / "model.zip"
    with zipfile.ZipFile(model, "w") as zf:
        for name, text in (("latest.pth", "w"), ("config.py", "num_classes=1,"), ("labels.txt", "cat")):
            zf.writestr(name, text)
    write_labelled_images(tmp_path / "unseen", {"cat": 1})

    code, text, run = await dry_run(tmp_path, "nodirs", "--docker-template-dir", str(defs), "--input",
                                    f"model={model}", "--input", "dataset=unseen", "--param",
                                    f"docker_image={mmcls_image}")

    assert code == 1, text
    assert "ERRORED: output 'predictions': nothing matches 'prediction/out/*.json'" in text
    assert "Input or output directory does not exist" in (run / "job.log").read_text()


def _toml(config: dict[str, object]) -> str:
    """A definition as TOML (the few shapes definitions use)."""
    lines, tables = [], []
    for key, value in config.items():
        if isinstance(value, dict) and key == "parameters":
            for name, decl in value.items():
                tables.append(f"[parameters.{name}]\n" + "".join(
                    f"{k} = {json.dumps(v)}\n" for k, v in decl.items()))
        elif isinstance(value, dict):
            lines.append(f"{key} = {{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}"
                                                     for k, v in value.items()) + " }")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{key} = [" + ", ".join("{ " + ", ".join(
                f"{k} = {json.dumps(v)}" for k, v in item.items()) + " }" for item in value) + "]")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n" + "\n".join(tables)


async def test_a_container_jobs_progress_moves_during_the_job(tmp_path: Path,
                                                              docker_problem: str | None) -> None:
    """The YOLOv5 stand-in prints each epoch as one Docker log line of tqdm updates joined by
    \\r; with the shipped YOLOv5 progress_regex the job's progress moves epoch by epoch while
    the container runs (the dry-run shows each value as the server has it), in a definition
    and docker_env given by --config."""
    if docker_problem:
        unavailable(docker_problem)
    image = await build_standin("yolov5")
    shipped = load_definition(DOCKER_D / "yolo_v5_objectdetection-train.toml")
    defs = tmp_path / "defs"
    defs.mkdir()
    dataset_yaml = "path: /data\ntrain: images/train\nnc: 1\nnames: ['cat']\n"
    files = [{"path": "data/dataset.yaml", "text": dataset_yaml},
             {"path": "models/pretrained.pt", "text": "weights"},
             {"path": "data/images/train/a.jpg", "text": "jpeg"},
             {"path": "data/labels/train/a.txt", "text": "0 0.5 0.5 0.1 0.1\n"}]
    (defs / "tqdm.toml").write_text(_toml({
        "template": "tqdm_progress", "image": image, "gpu": False, "dirs": ["output", "models"],
        "mounts": shipped["mounts"], "files": files, "progress_regex": shipped["progress_regex"],
        "commands": [["yolov5_train", "--img=416", "--batch=16", "--epochs=4", "--data=/data/dataset.yaml",
                      "--weights=/models/pretrained.pt", "--project=/output", "--name=job-number-${job_pk}"]],
        "outputs": [{"name": "model", "type": "Blob", "path": "output/job-number-*/weights/best.pt"}]}))
    config = tmp_path / "node.toml"
    config.write_text(f'docker_template_dirs = ["{defs}"]\n[docker_env]\nSTANDIN_EPOCH_S = "1.5"\n')

    code, text, run = await dry_run(tmp_path, "tqdm_progress", "--config", str(config))

    assert code == 0, text
    shown = [int(p) for p in re.findall(r"tqdm_progress: (\d+)% ", text.split("finished")[0])]
    moving = sorted({p for p in shown if 0 < p < 100})
    assert len(moving) >= 2, text  # at least two values between the start and the end
    assert shown.index(moving[0]) < shown.index(moving[-1])
    log = (run / "job.log").read_text()
    assert "        3/3        0G" in log  # the \r-joined updates are lines of the job log


# -- the pieces, without Docker -----------------------------------------------------------------


def test_the_shipped_progress_regexes_read_the_real_lines() -> None:
    """YOLOv5's tqdm update and mmcv's epoch lines give the job's share done."""
    yolo = load_definition(DOCKER_D / "yolo_v5_objectdetection-train.toml")
    pattern = EpochProgress(yolo["progress_regex"])
    line = ("        2/19     3.21G   0.04452   0.02281  0.008531        47       416:  40%|####      "
            "| 10/25 [00:04<00:06,  2.35it/s]")
    match = pattern.search(line)
    assert match is not None and float(match.groupdict()["progress"]) == pytest.approx((2 + 10 / 25) / 20)
    assert pattern.search("                 Class     Images     Labels          P          R") is None
    mmcv = load_definition(DOCKER_D / "_mmclassification_train.toml")
    mm = EpochProgress(mmcv["progress_regex"], 4)
    found = mm.search("2022-10-01 10:00:00,000 - mmcls - INFO - Epoch [2][10/25]\tlr: 1.000e-01")
    assert found is not None and float(found.groupdict()["progress"]) == pytest.approx((1 + 10 / 25) / 4)
    done = mm.search("2022-10-01 10:00:00,000 - mmcls - INFO - Epoch(val) [2][5]\taccuracy_top-1: 50.0")
    assert done is not None and float(done.groupdict()["progress"]) == pytest.approx(0.5)


def test_stock_defaults_reach_the_imported_templates() -> None:
    """The MMClassification train templates import with the stock body default and a null
    pretrained_model default (default_type Nothing); the predicts with the stock outputs'
    files; every definition's model output is the stock Model type."""
    specs = [s for s in _docker_module().handlers(SimpleNamespace(docker_template_dirs=[DOCKER_D]))
             if isinstance(s, HandlerSpec)]
    for spec in specs:
        [name] = spec.templates
        assert spec.description is not None
        parameters = spec.description.import_spec(name)["specific"]["parameters"]
        if name.startswith("mmclassification"):
            assert parameters["body"].get("default") not in (None, [], ""), name
        if "pretrained_model" in parameters and name.startswith("mmclassification"):
            assert (parameters["pretrained_model"]["default"],
                    parameters["pretrained_model"]["default_type"]) == (None, "Nothing")
    resnet = load_definition(DOCKER_D / "mmclassification_0.23.1_resnet50_train.toml")
    assert "pretrained" not in resnet
    assert "        depth=50," in resnet["parameters"]["body"]["default"]


def test_extends_problems_are_one_line_naming_the_file_and_key(tmp_path: Path) -> None:
    """A base that is missing, outside the directory, or a cycle: one PluginError line each."""
    (tmp_path / "missing.toml").write_text('extends = "_nope.toml"\n')
    (tmp_path / "outside.toml").write_text('extends = "../x.toml"\n')
    (tmp_path / "_a.toml").write_text('extends = "_b.toml"\n')
    (tmp_path / "_b.toml").write_text('extends = "_a.toml"\n')
    (tmp_path / "cycle.toml").write_text('extends = "_a.toml"\n')
    problems = {str(p).split(": ", 1)[0]: str(p) for p in
                _docker_module().handlers(SimpleNamespace(docker_template_dirs=[tmp_path]))}
    assert all(isinstance(p, str) for p in problems.values())
    assert problems[f"docker template file {tmp_path / 'missing.toml'}"].endswith(
        f"extends: '_nope.toml' is not a file in {tmp_path}")
    assert problems[f"docker template file {tmp_path / 'outside.toml'}"].endswith(
        f"extends: '../x.toml' must be the name of a file in {tmp_path}")
    assert "makes a cycle" in problems[f"docker template file {tmp_path / 'cycle.toml'}"]
    assert all(len(p.splitlines()) == 1 for p in problems.values())


def test_a_definition_extending_another_overrides_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "_base.toml").write_text('image = "x"\ncommands = ["true"]\n'
                                         '[parameters.a]\ntypes = ["int"]\ndefault = 1\nhelp = "base"\n')
    (tmp_path / "child.toml").write_text('extends = "_base.toml"\n[parameters.a]\ndefault = 2\n')
    [spec] = _docker_module().handlers(SimpleNamespace(docker_template_dirs=[tmp_path]))
    assert not isinstance(spec, PluginError), spec
    assert spec.description is not None
    [a] = spec.description.parameters
    assert (spec.templates, a.types, a.default, a.help) == (("child",), ("int",), 2, "base")


def test_a_pretrained_archive_climbing_out_fails_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "weights.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("good.pth", "../evil.pth"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, __import__("io").BytesIO(b"data"))
    dest = tmp_path / "models" / "pretrained"

    with pytest.raises(JobFailed) as info:
        _extract_pretrained(archive, dest, "pretrained model yolo")

    assert info.value.reason.startswith("pretrained model yolo: ") and "\n" not in info.value.reason
    assert not (tmp_path / "models" / "evil.pth").exists() and not (dest / "good.pth").exists()
    assert not archive.exists()


def _yolo_folder(root: Path, images: int) -> list[Path]:
    """An object-detection folder as ``dataset=DIR`` takes it: PNGs, a YOLO ``.txt`` of boxes
    beside each, the label names in labels.txt."""
    written = write_labelled_images(root / "tmp", {"img": images})
    root.mkdir(exist_ok=True)
    moved = []
    for n, path in enumerate(written):
        target = root / path.name
        path.rename(target)
        target.with_suffix(".txt").write_text(f"{n % 2} 0.5 0.5 0.4 0.4\n")
        moved.append(target)
    shutil.rmtree(root / "tmp")
    (root / "labels.txt").write_text("cat\ndog\n")
    return moved


@pytest.mark.skipif("to-yolo-od" not in STAGES or "to-images-od" not in STAGES,
                    reason="needs the node's to-yolo-od and to-images-od writers (branch `writers`)")
@pytest.mark.parametrize(("version", "zipped"), [("v5", ["best.onnx", "labels.csv"]),
                                                 ("v7", ["best.onnx", "best.pt", "labels.csv"])])
async def test_yolo_train_then_predict(tmp_path: Path, docker_problem: str | None, version: str,
                                       zipped: list[str]) -> None:
    """YOLOv5/v7 Train on an object-detection folder with a pretrained model given as a file:
    the stand-in reads dataset.yaml, images/ and labels/, the ONNX export runs, the model zip is
    saved with the stock type; a Predict on it uploads one <image>-rois.csv per image as
    predictions_csv."""
    if docker_problem:
        unavailable(docker_problem)
    image = await build_standin(f"yolo{version}")
    _yolo_folder(tmp_path / "dataset", 20)
    (tmp_path / "pretrained.pt").write_bytes(b"pretrained")

    code, text, run = await dry_run(tmp_path, f"yolo_{version}_objectdetection-train", "--input",
                                    "dataset=dataset", "--param", f"docker_image={image}", "--param",
                                    "epochs=2", "--param", f"pretrained_model={tmp_path / 'pretrained.pt'}")

    assert code == 0, text
    model = _saved(run, "model")
    assert model.name == f"model.Model_Domain_Object_Detection_Framework_yolo_{version}"
    with zipfile.ZipFile(model) as zf:
        assert sorted(zf.namelist()) == zipped
        assert zf.read("best.onnx").startswith(b"standin onnx")
    to_predict = _yolo_folder(tmp_path / "unseen", 2)

    code, text, run = await dry_run(tmp_path, f"yolo_{version}_objectdetection-predict", "--input",
                                    f"model={model}", "--input", "dataset=unseen", "--param",
                                    f"docker_image={image}")

    assert code == 0, text
    with zipfile.ZipFile(_saved(run, "predictions_csv")) as zf:
        assert sorted(zf.namelist()) == sorted(f"{p.stem}-rois.csv" for p in to_predict)
        assert zf.read(f"{to_predict[0].stem}-rois.csv").decode().splitlines()[1].endswith(",cat,0.87")


async def test_yolov5_default_pretrained_model_without_a_record_fails_in_one_line(
        tmp_path: Path, docker_problem: str | None) -> None:
    """The stock default pretrained_model (yolov5m_v6.0) is no record on a throw-away server:
    the job fails in one line naming it and saying what to give, before any container."""
    if "to-yolo-od" not in STAGES:
        pytest.skip("needs the node's to-yolo-od writer (branch `writers`)")
    if docker_problem:
        unavailable(docker_problem)
    image = await build_standin("yolov5")
    _yolo_folder(tmp_path / "dataset", 4)

    code, text, run = await dry_run(tmp_path, "yolo_v5_objectdetection-train", "--input", "dataset=dataset",
                                    "--param", f"docker_image={image}")

    assert code == 1, text
    assert ("ERRORED: pretrained model 'yolov5m_v6.0' (pretrained_model): the server has no such "
            "record") in text
    assert "container started" not in (run / "job.log").read_text()


FEATURES = """
template = "features"
job_type = "Predict"
domain = "Image Classification"
framework = "busybox:1"
image = "{image}"
gpu = false
model = {{ input = "model", dest = "models/weights.bin", unpack = false }}
dirs = ["prediction/out"]
cache = "/root/.cache/torch"
shm_size = "${{shm}}"
commands = [
  {{ run = "echo yes > /workspace/prediction/out/when.txt", when = "first" }},
  {{ run = "echo no > /workspace/prediction/out/skipped.txt", when = "second" }},
  {{ run = "echo yes > /workspace/prediction/out/unless.txt", unless = "second" }},
  "df -k /dev/shm | tail -n 1 | awk '{{print $2}}' > /workspace/prediction/out/shm.txt",
  "touch /root/.cache/torch/ufdl-node-test && ls /.cache/ufdl-node-test > prediction/out/cache.txt",
  "cat /workspace/models/weights.bin > /workspace/prediction/out/weights.txt",
]
outputs = [{{ name = "out", type = "Blob", path = "prediction/out", zip = true }}]

[inputs]
dataset = "PK<Dataset<Domain<'Image Classification'>>>"
model = "JobOutput<Model<Domain<'Image Classification'>, Framework<'busybox', '1'>>>"

[parameters.first]
types = ["bool"]
default = true
[parameters.second]
types = ["bool"]
default = false
[parameters.shm]
types = ["str"]
default = "32m"
"""


async def test_definition_features_in_a_real_container(tmp_path: Path, docker_problem: str | None) -> None:
    """dirs made before the first command, commands run only when (or unless) a parameter is
    set, /dev/shm from a parameter, the node's cache at another path too, and a model input
    taken as a file (not a zip)."""
    if docker_problem:
        unavailable(docker_problem)
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "features.toml").write_text(FEATURES.format(image=TEST_IMAGE))
    (tmp_path / "weights.bin").write_text("not a zip\n")
    write_labelled_images(tmp_path / "dataset", {"cat": 1})

    code, text, run = await dry_run(tmp_path, "features", "--docker-template-dir", str(defs), "--input",
                                    "dataset=dataset", "--input", f"model={tmp_path / 'weights.bin'}")

    assert code == 0, text
    with zipfile.ZipFile(_saved(run, "out")) as zf:
        files = {name: zf.read(name).decode().strip() for name in zf.namelist()}
    assert files == {"when.txt": "yes", "unless.txt": "yes", "shm.txt": str(32 * 1024),
                     "cache.txt": "/.cache/ufdl-node-test", "weights.txt": "not a zip"}


async def test_every_shipped_definition_imports_with_its_stock_parameters(tmp_path: Path) -> None:
    """`templates import` (the same import dry-run makes) of every shipped definition on the
    embedded server: each is accepted, and the server's template keeps the stock defaults
    (the MMClassification body and null pretrained_model among them) and the stock type."""
    from tests.daemon.conftest import ADMIN_PW, server_settings
    from ufdl_node.cli.local import import_handler_template
    from ufdl_node.client import UfdlClient
    from ufdl_node.server import EmbeddedServer

    specs = [s for s in _docker_module().handlers(SimpleNamespace(docker_template_dirs=[DOCKER_D]))
             if isinstance(s, HandlerSpec)]
    assert len(specs) == len(list(DOCKER_D.glob("[!_]*.toml"))) >= 35  # one per file; _*.toml are bases
    async with EmbeddedServer(server_settings(tmp_path / "server")) as server, \
            UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        for spec in specs:
            [name] = spec.templates
            assert spec.description is not None
            made = await import_handler_template(admin, spec, name)
            got = await admin.get_template(int(made["pk"]))
            sent = spec.description.template_parameters()
            for parameter, decl in sent.items():
                assert got["parameters"][parameter].get("default") == decl.get("default"), (name, parameter)
            job_type = spec.description.import_spec(name)["specific"]["job_type"]
            assert got.get("type", job_type) == job_type, name
