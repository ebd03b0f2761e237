"""``demo_train``: a training handler that behaves like a real one, without a GPU or data.

It runs ``epochs`` epochs of ``epoch_seconds`` each, reports progress with the
loss and accuracy after every epoch (a plausible, decreasing loss curve),
honours cancellation between and during epochs, and uploads a model file
(``model``, a small binary of weights) and a metrics JSON (``metrics``).
``fail_at_epoch`` makes it fail at that epoch with a clear reason, for demos.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import struct

from ufdl_node.api import JobContext, JobFailed, Parameter, TemplateDescription, handler

MODEL_TYPE = "Blob"
METRICS_TYPE = "JSON"
WEIGHTS = 64

DESCRIPTION = TemplateDescription(
    job_type="Train",
    domain="Image Classification",
    framework="demo:1.0",
    inputs={"dataset": "PK<Dataset<Domain<'Image Classification'>>>"},
    parameters=(
        Parameter("epochs", ("int",), 5, "number of epochs to train"),
        Parameter("learning_rate", ("float",), 0.1, "step size; larger learns faster (up to a point)"),
        Parameter("fail_at_epoch", ("int",), -1,
                  "fail the job at this epoch (1-based) for demos; -1 never fails"),
        Parameter("epoch_seconds", ("float",), 0.5, "how long one epoch takes"),
    ),
    description="Demo training: epochs with loss and accuracy, a model file and a metrics JSON.",
)


@handler("demo_train", description=DESCRIPTION)
async def run(ctx: JobContext) -> None:
    """Train the demo model: epochs, progress with metrics, model and metrics outputs."""
    epochs: int = ctx.params["epochs"]
    learning_rate: float = ctx.params["learning_rate"]
    fail_at: int = ctx.params["fail_at_epoch"]
    epoch_s: float = ctx.params["epoch_seconds"]
    if epochs < 1:
        raise JobFailed(f"epochs must be at least 1, got {epochs}")
    if not 0 < learning_rate <= 10:
        raise JobFailed(f"learning_rate must be in (0, 10], got {learning_rate}")
    if epoch_s < 0:
        raise JobFailed(f"epoch_seconds must not be negative, got {epoch_s}")
    dataset = ctx.inputs.get("dataset")
    ctx.log.info("training", dataset=dataset.value if dataset else None, epochs=epochs,
                 learning_rate=learning_rate)

    rng = random.Random(f"{ctx.pk}-{learning_rate}")  # the same job gives the same curve
    weights = [rng.gauss(0.0, 1.0) for _ in range(WEIGHTS)]
    history = []
    ctx.progress(0.0, epoch=0, epochs=epochs)
    for epoch in range(1, epochs + 1):
        await asyncio.sleep(epoch_s)  # the "work"; a cancel lands here
        if epoch == fail_at:
            raise JobFailed(f"demo failure at epoch {epoch} of {epochs} (fail_at_epoch={fail_at})")
        decay = math.exp(-min(learning_rate, 1.0) * epoch * 0.8)
        loss = round(2.3 * decay + 0.05 + rng.uniform(0.0, 0.03), 4)
        accuracy = round(min(0.99, 1.0 - 0.9 * decay + rng.uniform(-0.01, 0.01)), 4)
        weights = [w * (1 - learning_rate * 0.1) + rng.gauss(0.0, 0.01) for w in weights]
        history.append({"epoch": epoch, "loss": loss, "accuracy": accuracy})
        ctx.log.info("epoch done", epoch=epoch, loss=loss, accuracy=accuracy)
        ctx.progress(epoch / epochs, epoch=epoch, epochs=epochs, loss=loss, accuracy=accuracy)

    model = b"UFDLDEMO" + struct.pack(f"<I{WEIGHTS}f", WEIGHTS, *weights)
    metrics = {"epochs": epochs, "learning_rate": learning_rate, "final_loss": history[-1]["loss"],
               "final_accuracy": history[-1]["accuracy"], "history": history}
    await ctx.upload("model", MODEL_TYPE, model)
    await ctx.upload("metrics", METRICS_TYPE, json.dumps(metrics, indent=2).encode())
    ctx.log.info("trained", final_loss=history[-1]["loss"], final_accuracy=history[-1]["accuracy"])
