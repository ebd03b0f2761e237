"""The demo training handler: epochs, metrics, outputs, failure on request, cancellation."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest

from ufdl_node.api import HandlerSpec, JobContext, JobFailed
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from .conftest import FakeIO, MakeCtx


@pytest.fixture(scope="module")
def spec() -> HandlerSpec:
    """demo_train as the registry loads it from the shipped handlers."""
    found = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False).for_template("demo_train", 1)
    assert found is not None
    return found


def _ctx(make_ctx: MakeCtx, spec: HandlerSpec, epoch_seconds: float = 0.0, **params: Any) -> JobContext:
    assert spec.description is not None
    values = {"epoch_seconds": {"value": epoch_seconds, "type": "float"}}
    values.update({k: {"value": v, "type": "int"} for k, v in params.items()})
    return make_ctx(spec=spec, template_name="demo_train", params=values,
                    template_params=spec.description.template_parameters(),
                    inputs={"dataset": {"value": 1, "type": spec.description.inputs["dataset"]}})


async def test_demo_train_reports_metrics_per_epoch(spec: HandlerSpec, make_ctx: MakeCtx, io: FakeIO) -> None:
    """Each epoch reports progress with loss and accuracy; the loss falls."""
    await spec(_ctx(make_ctx, spec, epochs=4))
    epochs = [(amount, data) for amount, data in io.progress if data.get("epoch")]
    assert [amount for amount, _ in epochs] == [0.25, 0.5, 0.75, 1.0]
    losses = [data["loss"] for _, data in epochs]
    assert losses == sorted(losses, reverse=True) and all(0 <= d["accuracy"] <= 1 for _, d in epochs)


async def test_demo_train_uploads_model_and_metrics(spec: HandlerSpec, make_ctx: MakeCtx, io: FakeIO) -> None:
    """It uploads a model file of weights and a metrics JSON with the history."""
    await spec(_ctx(make_ctx, spec, epochs=2))
    model_type, model = io.uploads["model"]
    metrics_type, metrics = io.uploads["metrics"]
    assert model_type == "Blob" and model.startswith(b"UFDLDEMO")
    assert struct.unpack_from("<I", model, 8) == (64,)
    assert metrics_type == "JSON"
    assert [h["epoch"] for h in json.loads(metrics)["history"]] == [1, 2]


async def test_demo_train_fails_at_the_requested_epoch(spec: HandlerSpec, make_ctx: MakeCtx,
                                                       io: FakeIO) -> None:
    """fail_at_epoch fails the job at that epoch with a clear reason and no outputs."""
    with pytest.raises(JobFailed, match=r"demo failure at epoch 2 of 5 \(fail_at_epoch=2\)"):
        await spec(_ctx(make_ctx, spec, fail_at_epoch=2))
    assert io.uploads == {}


async def test_demo_train_stops_when_cancelled(spec: HandlerSpec, make_ctx: MakeCtx, io: FakeIO,
                                               wait_for) -> None:
    """Cancelling the handler's task stops it mid-epoch, without outputs."""
    ctx = _ctx(make_ctx, spec, epoch_seconds=60.0, epochs=3)
    task = asyncio.ensure_future(spec(ctx))
    await wait_for(lambda: io.progress, what="the first epoch to begin")  # its 0.0 report
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert io.uploads == {} and [amount for amount, _ in io.progress] == [0.0]


async def test_demo_train_refuses_bad_epochs(spec: HandlerSpec, make_ctx: MakeCtx) -> None:
    """A nonsensical parameter fails the job with a clear reason."""
    with pytest.raises(JobFailed, match="epochs must be at least 1, got 0"):
        await spec(_ctx(make_ctx, spec, epochs=0))
