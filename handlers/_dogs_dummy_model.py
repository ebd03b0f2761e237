"""What the stock ``dogs_dummy`` templates compute, as pure functions (beside their handler,
``dogs_dummy.py``, which loads this file; the registry skips files starting with ``_``).

Reference: the UFDL job launcher's plugin ``classify/dogs_dummy.py``
(``ImageClassificationTrain_DogsDummy_1`` / ``ImageClassificationPredict_DogsDummy_1``,
plugin repository ``waikato-ufdl/ufdl-job-launcher-plugins``, current version
with ``delay`` and ``frontend_metadata``), and the server's stock templates
(``ufdl-backend``, image-classification app, ``job_templates/0010_...`` and
``0011_...``). A "trial dummy learner": it scores how many of a dataset's
``.jpg`` images carry their *true* label and, at predict time, labels a
dataset with that accuracy, getting a random subset of images wrong.

The truth. The launcher compares against a table built into the plugin
(``CORRECT_LABELS``: some 1,700 Stanford-Dogs file names such as
``n02106662_6443.jpg`` → ``German_shepherd``; ``ALL_LABELS`` is the set of
its values). That table is not copied here: every function takes ``truth``
(file name → label). Given the plugin's table, results match the launcher's
on the stock dogs dataset; given a dataset's own labels, a user's folder of
images trains and predicts sensibly.

Templates (what the real server declares; ``frontend_metadata`` is shown by a
running server for both, required, no default)::

  dogs_dummy_image_class_train v1, "TRIAL", domain ic, licence Apache 2.0
    job_type  Train<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>
    factor             int    default 1000   "The accuracy factor."
    delay              float  default 0.0    "How long to sleep between processing each image."
    frontend_metadata  JSON   (required)
    input   dataset  PK<Dataset<Domain<'Image Classification'>>>

  dogs_dummy_image_class_predict v1, "TRIAL", domain ic, licence Apache 2.0
    job_type  Predict<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>
    store_predictions  bool  default true  "If enabled, the predictions get stored back in the
                                            dataset that they were generated for."
    per_class          bool  default true  "If enabled, accuracy is applied per-class rather than
                                            across the entire dataset."
    frontend_metadata  JSON  (required)
    inputs  model    JobOutput<Model<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>>
            dataset  PK<Dataset<Domain<'Image Classification'>>>

Outputs the launcher uploads (its current plugin; types as its executors declare
them: the Train contract's ``model``, ``ExtraOutput(JSON())``, ``ExtraOutput(BLOB("txt"))``)::

  train    model     Model<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>
                     a zip with one member "model": the text str(model), e.g. "0.003"
                     (only when the run succeeded)
           metadata  JSON  {"frontend": frontend_metadata, "job": {"executor": "train",
                     num_files, factor, score, files: {image: {label, correct_label,
                     correct}}, accuracy, model}}
  predict  predictions  BLOB<'txt'>  a zip of "<image stem>.txt" files, each the predicted
                     label ("" when there is none)
           metadata  JSON  {"frontend": frontend_metadata, "job": {"executor": "predict",
                     model, num_files, per_class, files: {image: {predicted_label,
                     correct_label, correct}}, num_correct, accuracy}}
  both     log       Compressed<JSON, 8>  uploaded by the launcher's base executor for every
                     job (a zip whose member "data" is the JSON log), not by the plugin;
                     here the node's daemon uploads it, the same way

``model`` is what the model holds: min(1, score / factor). ``accuracy`` is the share
of this run's images that were right: train score / num_files (the images whose
label is their true one), predict num_correct / num_files. "job" is missing when
the run failed; ``metadata`` is uploaded either way.

Storing the predictions. The current launcher clears the dataset's annotations
before every predict (``download_dataset(..., clear_dataset=True)``:
``DELETE /v1/datasets/{pk}/clear``), even with store_predictions false, then, with
store_predictions, adds each non-empty prediction (python client ``add_categories``:
``PATCH /v1/classify/datasets/{pk}/categories {"method": "add", ...}``), logging
and ignoring a failure. The built-in handler protects the user's labels instead:
it clears only when asked (a ``clear_dataset`` parameter, which the stock
template does not declare), otherwise sets just the predicted images' labels
(:func:`ufdl_node.work.labels.store_predictions`), and a failure fails the job.
On the stock dogs dataset, where every image is predicted, the labels end the
same. Predict downloads the dataset as bare images (wai-annotations
``to-images-ic``); train as class folders (``to-subdir-ic -o .``), taking each
image's folder as its label. The server's template JSON files (``0010``/``0011``)
declare factor/delay and store_predictions/per_class; ``frontend_metadata`` comes
from the executors (``Parameter(JSON())``) and shows on a running server.

Progress the launcher reports: train 0.1 "Downloaded dataset", 0.1 + 0.8 * i/n
after image i (sleeping ``delay`` s after each), 0.9 "Analysed dataset";
predict 0.05 "Downloaded dataset", 0.1 "Downloaded model", 0.15 "Decompressed
model", 0.2 "Loaded dataset", 0.25 "Loaded model", 0.4 "Analysed dataset",
0.4 + 0.5 * i/n per prediction written, 1.0 "Uploaded predictions to server".
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ufdl_node.api import JobFailed
from ufdl_node.logs import one_line

TRAIN_TEMPLATE = "dogs_dummy_image_class_train"
PREDICT_TEMPLATE = "dogs_dummy_image_class_predict"
DOMAIN = "Image Classification"
FRAMEWORK = ("dogs_dummy", "1")
MODEL_TYPE = "Model<Domain<'Image Classification'>, Framework<'dogs_dummy', '1'>>"
DATASET_TYPE = "PK<Dataset<Domain<'Image Classification'>>>"
PREDICTIONS_TYPE = "BLOB<'txt'>"
METADATA_TYPE = "JSON"
MODEL_MEMBER = "model"  # the one file in the model zip
IMAGE_SUFFIX = ".jpg"  # the launcher looks at these only (case-sensitive)
# What the built-in handlers look at: the launcher's .jpg, and the other common image
# files, so that a user's folder of PNGs trains (the stock dogs dataset is all .jpg).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

TRAIN_PARAMETERS: dict[str, dict[str, Any]] = {
    "factor": {"types": ["int"], "default": 1000, "help": "The accuracy factor."},
    "delay": {"types": ["float"], "default": 0.0,
              "help": "How long to sleep between processing each image."},
    "frontend_metadata": {"types": ["JSON"], "help": "Metadata to upload to the job-launcher."},
}
PREDICT_PARAMETERS: dict[str, dict[str, Any]] = {
    "store_predictions": {"types": ["bool"], "default": True,
                          "help": "If enabled, the predictions get stored back in the dataset "
                                  "that they were generated for."},
    "per_class": {"types": ["bool"], "default": True,
                  "help": "If enabled, accuracy is applied per-class rather than across the "
                          "entire dataset."},
    "frontend_metadata": {"types": ["JSON"], "help": "Metadata to upload to the job-launcher."},
}


def images(names: Iterable[str], suffixes: tuple[str, ...] = (IMAGE_SUFFIX,)) -> list[str]:
    """The base names of the images among `names` (by default the launcher's selection,
    ``.jpg``), sorted."""
    return sorted({PurePosixPath(n).name for n in names if n.endswith(suffixes)})


@dataclass(frozen=True)
class TrainResult:
    """What a train job computes: ``model`` (min(1, score / factor)) is the model."""

    model: float
    score: int
    factor: int
    files: dict[str, dict[str, Any]]

    @property
    def accuracy(self) -> float:
        """The share of the images that carry their true label (score / images), what the
        launcher's metadata calls ``accuracy``; not the model."""
        return self.score / len(self.files)

    def model_text(self) -> str:
        """The content of the model zip's one member: ``str(model)``."""
        return str(self.model)

    def metadata(self, frontend: Any) -> dict[str, Any]:
        """The ``metadata`` output, as the current launcher plugin writes it (same keys,
        same order)."""
        return {"frontend": frontend,
                "job": {"executor": "train", "num_files": len(self.files), "factor": self.factor,
                        "score": self.score, "files": dict(self.files), "accuracy": self.accuracy,
                        "model": self.model}}


def train(labels: Mapping[str, str], truth: Mapping[str, str], factor: int, *,
          suffixes: tuple[str, ...] = (IMAGE_SUFFIX,)) -> TrainResult:
    """Score a dataset: `labels` is its images' labels (file name → label; files ending in
    one of `suffixes` count), `truth` the true labels. model = min(1, correctly labelled /
    factor). No image to score fails the job (the launcher divides by zero there)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor <= 0:
        raise JobFailed(f"factor must be a positive integer, got {one_line(repr(factor), 40)}")
    by_image = {PurePosixPath(name).name: label for name, label in labels.items()
                if name.endswith(suffixes)}
    if not by_image:
        raise JobFailed(f"no labelled images ({', '.join(suffixes)}) to train on")
    files: dict[str, dict[str, Any]] = {}
    score = 0
    for image in sorted(by_image):
        label, correct_label = by_image[image], truth.get(image)
        correct = correct_label == label
        score += correct
        files[image] = {"label": label, "correct_label": correct_label, "correct": correct}
    return TrainResult(min(1.0, score / factor), score, factor, files)


def read_model(text: str) -> float:
    """The accuracy a model file holds; JobFailed when it is not a number in [0, 1]."""
    try:
        accuracy = float(text.strip())
    except ValueError:
        raise JobFailed(f"the model holds {one_line(repr(text), 40)}, not an accuracy") from None
    if not 0.0 <= accuracy <= 1.0:
        raise JobFailed(f"the model's accuracy {accuracy} is not within [0, 1]")
    return accuracy


@dataclass(frozen=True)
class PredictResult:
    """What a predict job computes with the model ``model`` (the accuracy it was trained
    to): the label it gives each image (None: none)."""

    model: float
    per_class: bool
    predictions: dict[str, str | None]
    truth: dict[str, str | None] = field(repr=False)

    @property
    def num_correct(self) -> int:
        """How many predictions equal the true label."""
        return sum(self.predictions[f] == self.truth[f] for f in self.predictions)

    @property
    def accuracy(self) -> float:
        """The share of the predictions that are correct (num_correct / images), what the
        launcher's metadata calls ``accuracy``; 0.0 for no image."""
        return self.num_correct / len(self.predictions) if self.predictions else 0.0

    def metadata(self, frontend: Any) -> dict[str, Any]:
        """The ``metadata`` output, as the current launcher plugin writes it (same keys,
        same order)."""
        files = {f: {"predicted_label": p, "correct_label": self.truth[f], "correct": p == self.truth[f]}
                 for f, p in self.predictions.items()}
        return {"frontend": frontend,
                "job": {"executor": "predict", "model": self.model, "num_files": len(self.predictions),
                        "per_class": self.per_class, "files": files, "num_correct": self.num_correct,
                        "accuracy": self.accuracy}}

    def labels_to_store(self) -> dict[str, str]:
        """The predictions that ``store_predictions`` writes into the dataset (non-empty
        ones: an image without a prediction keeps its labels)."""
        return {f: p for f, p in self.predictions.items() if p}


def _wrong(files: list[str], accuracy: float, rng: random.Random) -> set[str]:
    count = round((1.0 - accuracy) * len(files))  # Python's round, as the launcher's
    return set(rng.sample(files, count))


def predict(names: Iterable[str], truth: Mapping[str, str], accuracy: float, *, per_class: bool,
            rng: random.Random | None = None, suffixes: tuple[str, ...] = (IMAGE_SUFFIX,)) -> PredictResult:
    """Label the images among `names` (``.jpg``, or `suffixes`) with `accuracy`: a random
    round((1 - accuracy) * n) of them (per true label when `per_class`, else over the
    images whose true label is known) get a random other label from `truth`'s labels;
    the rest their true label (None when `truth` does not know them)."""
    rng = rng or random.Random()
    all_labels = sorted(set(truth.values()))
    correct = {image: truth.get(image) for image in images(names, suffixes)}
    if per_class:
        wrong: set[str] = set()
        for label in all_labels:
            wrong |= _wrong([f for f, c in correct.items() if c == label], accuracy, rng)
    else:
        wrong = _wrong([f for f, c in correct.items() if c is not None], accuracy, rng)
    predictions: dict[str, str | None] = {}
    for image, true_label in correct.items():
        others = [x for x in all_labels if x != true_label]
        # With a single known label there is nothing else to guess: keep it (the launcher
        # would fail here on an empty choice).
        predictions[image] = rng.choice(others) if image in wrong and others else true_label
    return PredictResult(accuracy, per_class, predictions, correct)


def write_predictions(result: PredictResult, out_dir: Path | str) -> list[Path]:
    """One ``<image stem>.txt`` per image in `out_dir` holding its label ("" for none);
    two images with one stem ('a.jpg', 'a.png') fail the job rather than share a file."""
    stems: dict[str, str] = {}
    for image in result.predictions:
        other = stems.setdefault(PurePosixPath(image).stem, image)
        if other != image:
            raise JobFailed(f"images {other!r} and {image!r} would share the prediction file "
                            f"{PurePosixPath(image).stem}.txt")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for image, label in result.predictions.items():
        path = root / f"{PurePosixPath(image).stem}.txt"
        path.write_text(label or "", encoding="utf-8")
        written.append(path)
    return written


def write_model(result: TrainResult, path: Path | str) -> Path:
    """The model file (``model``: the model's value as text), to be zipped as the ``model`` output."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(result.model_text(), encoding="utf-8")
    return target
