"""Dataset, Docker-image and pretrained-model lists are streamed: the same JSON, filters and order."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ufdl_node.server import records_store as rs
from ufdl_node.server.common import store_of

from .conftest import Api, MakeApi, MakeServer
from .test_datasets import add_file, create
from .test_records import MMCLASS, RESNET


def ordered(value: Any) -> str:
    """The value as text that keeps key order: equal text means the same keys in the same order."""
    return json.dumps(value, sort_keys=False)


async def _scene(api: Api) -> None:
    """Datasets (files, odd text, public, deleted, another domain), images and models of each shape."""
    ds = await create(api, description="zoë ✓ \"quoted\" \\ \n tab\t", tags="a,b", is_public=True,
                      licence=2)
    for name, data in (("b.png", b"b"), ("a ü.png", b"a"), ("c.txt", b"c")):
        assert (await add_file(api, ds, name, data)).status == 200
    await create(api, domain="od", name="detections")
    gone = await create(api, name="gone")
    await api.ok("DELETE", f"/v1/datasets/{gone['pk']}", 204)
    await create(api, version=2, name="detections")
    await api.ok("POST", "/v1/docker/create", 201, as_="admin", json={**MMCLASS, "version": "1"})
    await api.ok("POST", "/v1/docker/create", 201, as_="admin",
                 json={**MMCLASS, "version": "cpu", "cpu": True, "min_hardware_generation": None,
                       "tasks": []})
    await api.ok("POST", "/v1/pretrained-models/create", 201, as_="admin", json={**RESNET, "name": "r1"})
    await api.ok("POST", "/v1/pretrained-models/create", 201, as_="admin",
                 json={**RESNET, "name": "r2", "metadata": {"nested": [1, 2.5, None, True, "ü"]}})


def _per_row(table: str, one: Callable[[Any, int], Any], to_json: Callable[[Any], Any],
             where: str = "") -> Callable[[Any], list[Any]]:
    """Every row of `table` (`where`), pk descending, as the per-row Python answers one GET."""
    def rows(store: Any) -> list[Any]:
        pks = [r[0] for r in store.db.execute(f"SELECT pk FROM {table} {where} ORDER BY pk DESC")]
        return [to_json(one(store, pk)) for pk in pks]

    return rows


LISTS = [
    ("/v1/datasets/list", _per_row("datasets", rs.dataset, rs.dataset_json)),
    ("/v1/classify/datasets/list", _per_row("datasets", rs.dataset, rs.dataset_json, "WHERE domain = 'ic'")),
    ("/v1/docker/list", _per_row("docker_images", rs.docker_image, rs.docker_json)),
    ("/v1/pretrained-models/list", _per_row("pretrained_models", rs.pretrained_model, rs.pretrained_json)),
]


@pytest.mark.parametrize(("path", "old"), LISTS, ids=[p for p, _ in LISTS])
async def test_a_streamed_list_is_the_old_json(make_server: MakeServer, make_api: MakeApi, path: str,
                                               old: Callable[[Any], list[Any]]) -> None:
    """Each streamed list decodes to what the per-row Python code answers for each record (a
    GET), keys in the same order."""
    server = await make_server()
    api = make_api(server)
    await _scene(api)
    spec = {"include_inactive": True, "order_by": [{"field": "pk", "ascending": False}]}
    reply = await api.call("POST", path, json=spec)
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    expected = old(store_of(server.app))
    assert len(expected) >= 2
    assert ordered(json.loads(reply.body.decode("utf-8"))) == ordered(expected)


async def test_dataset_lists_still_filter_and_order(make_server: MakeServer, make_api: MakeApi) -> None:
    """A filter picks the datasets it names, ordering holds, deleted ones stay out by default."""
    api = make_api(await make_server())
    await _scene(api)
    spec = {"expressions": [{"type": "exact", "field": "name", "value": "detections"}],
            "order_by": [{"field": "version", "ascending": False}]}
    found = await api.ok("POST", "/v1/datasets/list", json=spec)
    assert [(d["name"], d["version"], d["domain"]) for d in found] == [
        ("detections", 2, "Image Classification"), ("detections", 1, "Object Detection")]
    classify = await api.ok("POST", "/v1/classify/datasets/list", json=spec)
    assert [(d["version"], d["domain"]) for d in classify] == [(2, "Image Classification")]
    names = [d["name"] for d in await api.ok("POST", "/v1/datasets/list", json={})]
    assert "gone" not in names and len(names) == 3


async def test_record_lists_still_filter(make_server: MakeServer, make_api: MakeApi) -> None:
    """Docker images filter on a nested field, pretrained models on their name."""
    api = make_api(await make_server())
    await _scene(api)
    cpu = await api.ok("POST", "/v1/docker/list", json={
        "expressions": [{"type": "isnull", "field": "min_hardware_generation"}]})
    assert [(d["version"], d["cpu"], d["min_hardware_generation"]) for d in cpu] == [("cpu", True, None)]
    models = await api.ok("POST", "/v1/pretrained-models/list", json={
        "expressions": [{"type": "exact", "field": "name", "value": "r2"}]})
    assert [m["metadata"] for m in models] == [{"nested": [1, 2.5, None, True, "ü"]}]


async def test_a_bad_filter_on_a_record_list_is_still_a_400(api: Api) -> None:
    """A malformed filter is refused with the usual one-line JSON error before any streaming."""
    for path in ("/v1/datasets/list", "/v1/docker/list", "/v1/pretrained-models/list"):
        reply = await api.call("POST", path, json={"expressions": [{"type": "nope"}]})
        assert reply.status == 400 and "unknown expression type" in reply.json["detail"], (path, reply)
