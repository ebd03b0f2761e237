"""The stock Weka spectrum-classification templates, without a container.

``weka_spec_class_train`` and ``weka_spec_class_predict`` are run by the UFDL job launcher
in-process (``ufdl-job-launcher-plugins``, ``spectra/weka/executors.py``): it runs its
``bare.py`` with its own Python (python-weka-wrapper3 and a JVM), no Docker image. Here the
same: ``_weka_bare.py`` (a port of ``bare.py``) runs with the Python of the ``weka_python``
setting (default: the node's own), which must have python-weka-wrapper3 and a Java runtime
(``pip install python-weka-wrapper3``); without them the job fails with one line saying so.

- train: the dataset's spectra laid out as ``to-subdir-sc`` does (``data/<label>/<file>``,
  unlabelled spectra left out), ``bare train data <work> CLASSNAME OPTIONS``, the ``model``
  output a zip of ``model`` and ``labels`` (``Model<Domain<'Spectrum Classification'>,
  Framework<'weka', 'classifier'>>``); progress 0.1 after the download, 0.9 after training.
- predict: the model zip unpacked, the spectra into ``prediction/in`` (``to-spectra-sc``),
  ``bare predict <model> prediction/in prediction/out``, the ``predictions`` output a zip of
  ``prediction/out/*.txt`` (``BLOB<'txt'>``), and with ``store_predictions`` each spectrum's
  label written back (:mod:`ufdl_node.work.writeback`; ``clear_dataset`` clears the
  dataset first, once the run has succeeded rather than before the download).
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from ufdl_node.api import Dataset, JobContext, JobFailed, Parameter, TemplateDescription, handler
from ufdl_node.work.convert import materialise
from ufdl_node.work.labels import fetch_labels

BARE = Path(__file__).with_name("_weka_bare.py")
DOMAIN = "Spectrum Classification"
FRAMEWORK = "weka:classifier"
MODEL_TYPE = "Model<Domain<'Spectrum Classification'>, Framework<'weka', 'classifier'>>"
DATASET_TYPE = "PK<Dataset<Domain<'Spectrum Classification'>>>"
PREDICTIONS_TYPE = "BLOB<'txt'>"
CLEAR_HELP = "If enabled, any meta-data or predictions get removed from the dataset beforehand."
STORE_HELP = "If enabled, the predictions get stored back in the dataset that they were generated for."
DEFAULT_OPTIONS = [
    "-S", "1",
    "-B", "weka.classifiers.trees.RandomForest -P 100 -I 250 -num-slots 1 -K 0 -M 1.0 -V 0.001 -S 1",
    "-B", "weka.classifiers.functions.SMO -C 1.0 -L 0.001 -P 1.0E-12 -N 0 -M -V -1 -W 1 -K "
          "\"weka.classifiers.functions.supportVector.PolyKernel -E 1.0 -C 250007\" -calibrator "
          "\"weka.classifiers.functions.Logistic -R 1.0E-8 -M -1 -num-decimal-places 4\"",
    "-B", "weka.classifiers.trees.J48 -C 0.25 -M 2",
    "-R", "AVG",
]

TRAIN = TemplateDescription(
    job_type="Train", domain=DOMAIN, framework=FRAMEWORK, inputs={"dataset": DATASET_TYPE},
    parameters=(
        Parameter("classname", ("str",), "weka.classifiers.meta.Vote", "The classifier type to train."),
        Parameter("options", ("Array<str>", "str"), DEFAULT_OPTIONS, "The options to the classifier."),
    ),
    description="Trains spectrum classifiers using WEKA",
)
PREDICT = TemplateDescription(
    job_type="Predict", domain=DOMAIN, framework=FRAMEWORK,
    inputs={"model": f"JobOutput<{MODEL_TYPE}>", "dataset": DATASET_TYPE},
    parameters=(Parameter("clear_dataset", ("bool",), False, CLEAR_HELP),
                Parameter("store_predictions", ("bool",), False, STORE_HELP)),
    description="Predicts spectrum classifications using a WEKA classifier",
)


def _python(ctx: JobContext) -> str:
    return str(getattr(ctx.settings, "weka_python", None) or sys.executable)


def _place(dataset: Dataset, wanted: dict[str, str], root: Path) -> int:
    """Link each dataset file of `wanted` (file → folder below `root`, "" for root itself)
    into place; the files placed (blocking)."""
    placed = 0
    for name in dataset.files:
        folder = wanted.get(name)
        if folder is None:
            continue
        target = root / folder / PurePosixPath(name).name
        materialise(dataset.directory.joinpath(*name.split("/")), target, copy=False)
        placed += 1
    return placed


def _folder(label: str) -> str:
    if not label or "/" in label or label in (".", "..") or "\0" in label:
        raise JobFailed(f"label {label!r} cannot be a folder name")
    return label


@handler("weka_spec_class_train", description=TRAIN)
async def train(ctx: JobContext) -> None:
    """Train the classifier on the labelled spectra; upload the model zip."""
    dataset = await ctx.dataset()
    labels = await fetch_labels(ctx.server, dataset.pk, "sc")
    wanted = {name: _folder(cats[0]) for name, cats in labels.items() if cats and name.endswith(".spec")}
    data = ctx.work_dir / "data"
    if await asyncio.to_thread(_place, dataset, wanted, data) == 0:
        raise JobFailed(f"dataset {dataset.pk} has no labelled .spec file to train on")
    ctx.progress(0.1, comment="Downloaded dataset")
    options: Any = ctx.params["options"]
    text = options if isinstance(options, str) else shlex.join(str(o) for o in options)
    await ctx.run([_python(ctx), str(BARE), "train", str(data), str(ctx.work_dir),
                   ctx.params["classname"], text])
    ctx.progress(0.9, comment="Analysed dataset")
    await ctx.upload_zip("model", MODEL_TYPE, ["model", "labels"])


@handler("weka_spec_class_predict", description=PREDICT)
async def predict(ctx: JobContext) -> None:
    """Classify the dataset's spectra; upload the predictions; store them when asked."""
    dataset = await ctx.dataset()
    inputs, out = ctx.work_dir / "prediction" / "in", ctx.work_dir / "prediction" / "out"
    spectra = {name: "" for name in dataset.files if name.endswith(".spec")}
    await asyncio.to_thread(_place, dataset, spectra, inputs)
    out.mkdir(parents=True, exist_ok=True)
    ctx.progress(0.05, comment="Downloaded dataset")
    model = await ctx.model()
    if model.directory is None or not (model.directory / "model").is_file() \
            or not (model.directory / "labels").is_file():
        raise JobFailed("the model zip holds no 'model' and 'labels' (not a weka_spec_class_train model)")
    ctx.progress(0.15, comment="Decompressed model")
    await ctx.run([_python(ctx), str(BARE), "predict", str(model.directory), str(inputs), str(out)])
    written = sorted(out.glob("*.txt"))
    await ctx.upload_zip("predictions", PREDICTIONS_TYPE, written, compression="deflate")
    await ctx.store_prediction_files(dataset, "prediction/out", "sc-txt",
                                     store=bool(ctx.params["store_predictions"]),
                                     clear=bool(ctx.params["clear_dataset"]))
    ctx.progress(1.0, comment="Uploaded predictions to server")
