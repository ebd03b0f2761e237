"""The stock ``dogs_dummy`` templates: a trial dummy learner for image classification.

``dogs_dummy_image_class_train`` scores how many of a dataset's images carry their
true label and writes that, divided by ``factor`` (at most 1), as the model;
``dogs_dummy_image_class_predict`` labels a dataset with the model's accuracy,
getting a random share of the images wrong. They behave as the current UFDL job
launcher's executors of those templates (plugin ``classify/dogs_dummy.py``): the
same parameters, the same progress steps, the same outputs (a ``model`` zip
holding one file ``model``, a ``predictions`` zip of ``<image>.txt`` files, and a
``metadata`` JSON with the plugin's keys, ``executor``, ``model``, ``accuracy``...,
uploaded even when the run fails), and predictions stored back into the dataset
with ``store_predictions``. The exact formats, and the maths, are in ``_dogs_dummy_model.py``
beside this file.

Differences, all to keep a user's data or to work on a user's folder: the true
label of an image is its label in the dataset (the launcher has a built-in table
of Stanford Dogs file names); ``.jpeg`` and ``.png`` images count as well as
``.jpg``; a predict job never clears the dataset unless asked (a
``clear_dataset`` parameter; the launcher always clears), it sets just the
predicted images' labels, each to its prediction, and keeps every other label
(:mod:`ufdl_node.work.labels`); a failure to store them fails the job (the
launcher logs it and finishes). The templates declare the real server's parameters
exactly: ``frontend_metadata`` (JSON) has no default there, so a job must give it
(``ufdl-node submit ... --param frontend_metadata=null``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ufdl_node.api import MISSING, Dataset, JobContext, JobFailed, Parameter, TemplateDescription, handler
from ufdl_node.registry import load_module_file

if TYPE_CHECKING:  # mypy reads it as the module beside this file
    import _dogs_dummy_model as dd
else:  # a handler file is loaded by path, not as a package member: its helper is too
    dd = load_module_file(Path(__file__).with_name("_dogs_dummy_model.py"))

FRAMEWORK = ":".join(dd.FRAMEWORK)


def _parameters(declared: dict[str, dict[str, Any]]) -> tuple[Parameter, ...]:
    return tuple(Parameter(name, tuple(spec["types"]), spec.get("default", MISSING), spec.get("help", ""))
                 for name, spec in declared.items())


TRAIN = TemplateDescription(
    job_type="Train", domain=dd.DOMAIN, framework=FRAMEWORK,
    inputs={"dataset": dd.DATASET_TYPE},
    parameters=_parameters(dd.TRAIN_PARAMETERS),
    description="Trial dummy learner for the dog-breeds dataset: the model is the share of "
                "correctly labelled images over the accuracy factor.",
)
PREDICT = TemplateDescription(
    job_type="Predict", domain=dd.DOMAIN, framework=FRAMEWORK,
    inputs={"model": f"JobOutput<{dd.MODEL_TYPE}>", "dataset": dd.DATASET_TYPE},
    parameters=_parameters(dd.PREDICT_PARAMETERS),
    description="Trial dummy predictor for the dog-breeds dataset: labels the images with "
                "the model's accuracy.",
)


async def _metadata_anyway(ctx: JobContext, metadata: dict[str, Any]) -> None:
    """The launcher uploads ``metadata`` even when the run failed; a failure to do so must
    not hide the job's own error."""
    with contextlib.suppress(Exception):
        await ctx.upload_metadata(metadata)


@handler(dd.TRAIN_TEMPLATE, description=TRAIN)
async def train(ctx: JobContext) -> None:
    """Score the dataset's labels; upload the model zip and the metadata."""
    frontend = ctx.params.get("frontend_metadata")
    try:
        delay: float = ctx.params["delay"]
        if delay < 0:
            raise JobFailed(f"delay must not be negative, got {delay}")
        dataset = await ctx.dataset()
        ctx.progress(0.1, comment="Downloaded dataset")
        labels = dataset.labels()
        result = dd.train(labels, labels, ctx.params["factor"], suffixes=dd.IMAGE_SUFFIXES)
        for index in range(len(result.files)):
            ctx.progress(0.1 + 0.8 * (index + 1) / len(result.files))
            if delay > 0:
                await asyncio.sleep(delay)
        ctx.progress(0.9, comment="Analysed dataset")
        ctx.log.info("trained", dataset=dataset.pk, images=len(result.files), accuracy=result.accuracy,
                     model=result.model)
        model = dd.write_model(result, ctx.work_dir / "model" / dd.MODEL_MEMBER)
        await ctx.upload_zip("model", dd.MODEL_TYPE, [model])
    except Exception:  # not on a cancel: the job is stopping, not failing
        await _metadata_anyway(ctx, {"frontend": frontend})
        raise
    await ctx.upload_metadata(result.metadata(frontend))


async def _read_model(ctx: JobContext) -> float:
    """The predict job's model: the accuracy its one file holds."""
    model = await ctx.model()
    ctx.progress(0.1, comment="Downloaded model")
    assert model.directory is not None
    member = model.directory / dd.MODEL_MEMBER
    if not member.is_file():
        raise JobFailed(f"{model.ref} holds no file {dd.MODEL_MEMBER!r}: not a dogs_dummy model")
    ctx.progress(0.15, comment="Decompressed model")
    ctx.progress(0.2, comment="Loaded dataset")
    text = await asyncio.to_thread(member.read_text, encoding="utf-8", errors="replace")
    accuracy = dd.read_model(text)
    ctx.progress(0.25, comment="Loaded model")
    return accuracy


async def _store(ctx: JobContext, dataset: Dataset, result: dd.PredictResult) -> None:
    """Write the predictions into the dataset (``store_predictions``): each predicted image
    gets just its label, other files keep theirs; ``clear_dataset``, where a template
    declares it, clears every label first (even without ``store_predictions``, as the
    launcher's other predict executors do)."""
    clear = bool(ctx.params.get("clear_dataset", False))
    if ctx.params["store_predictions"]:
        calls = await ctx.store_predictions(dataset, result.labels_to_store(), clear=clear)
        ctx.log.info("predictions stored", dataset=dataset.pk, calls=calls, cleared=clear)
    elif clear:
        await ctx.clear_annotations(dataset)


@handler(dd.PREDICT_TEMPLATE, description=PREDICT)
async def predict(ctx: JobContext) -> None:
    """Label the dataset with the model's accuracy; upload the predictions, store them back
    into the dataset when ``store_predictions``, and upload the metadata."""
    frontend = ctx.params.get("frontend_metadata")
    metadata: dict[str, Any] = {"frontend": frontend}
    try:
        dataset = await ctx.dataset()
        truth = dataset.labels()  # read before any label is changed
        ctx.progress(0.05, comment="Downloaded dataset")
        accuracy = await _read_model(ctx)
        result = dd.predict(dataset.files, truth, accuracy, per_class=ctx.params["per_class"],
                            suffixes=dd.IMAGE_SUFFIXES)
        if not result.predictions:
            raise JobFailed(f"dataset {dataset.pk} holds no images ({', '.join(dd.IMAGE_SUFFIXES)})")
        ctx.progress(0.4, comment="Analysed dataset")
        written = await asyncio.to_thread(dd.write_predictions, result, ctx.work_dir / "prediction" / "out")
        ctx.progress(0.9)
        metadata = result.metadata(frontend)  # the run is done: a failure to store keeps it
        await ctx.upload_zip("predictions", dd.PREDICTIONS_TYPE, written)
        await _store(ctx, dataset, result)
    except Exception:  # not on a cancel: the job is stopping, not failing
        await _metadata_anyway(ctx, metadata)
        raise
    ctx.log.info("predicted", dataset=dataset.pk, images=len(result.predictions),
                 correct=result.num_correct, accuracy=result.accuracy)
    await ctx.upload_metadata(metadata)
    ctx.progress(1.0, comment="Uploaded predictions to server")
