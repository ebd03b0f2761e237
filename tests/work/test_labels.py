"""Image-classification labels written with the real server's calls, against the embedded server.

``add_labels``/``remove_labels`` (PATCH), ``clear_labels`` (DELETE .../clear) and
``store_predictions`` run against ``python -m ufdl_node server``'s app on loopback;
``set_labels`` (POST {file: [labels]}) against a small loopback server that does what
the real backend's ``set_categories`` does, since the embedded server of this branch
does not set yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ufdl_node.client import UfdlClient
from ufdl_node.errors import JobFailed
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import ServerSettings
from ufdl_node.transport import Transport
from ufdl_node.work.labels import (
    add_labels,
    clear_labels,
    plan_predictions,
    remove_labels,
    set_labels,
    store_predictions,
)
from ufdl_node.work.server_access import ServerAccess

ADMIN_PW = "labels-admin-pw-1"
FILES = ("a.jpg", "b.jpg", "c.jpg", "notes.txt")
USER_LABELS = {"a.jpg": ["dog"], "b.jpg": ["cat", "pet"], "c.jpg": ["bird"], "notes.txt": ["keep"]}


async def _tokens(_: web.Request) -> web.Response:
    return web.json_response({"access": "a-token", "refresh": "r-token"})


@dataclass
class Ufdl:
    """The embedded server, an admin client, a ServerAccess and one dataset (``pk``)."""

    admin: UfdlClient
    access: ServerAccess
    pk: int

    async def labels(self) -> dict[str, list[str]]:
        """The dataset's labels as the server holds them, each list sorted."""
        reply = await self.admin.request("GET", f"/v1/classify/datasets/{self.pk}/categories")
        return {name: sorted(labels) for name, labels in reply.items()}


@pytest.fixture
async def ufdl(tmp_path: Path) -> AsyncIterator[Ufdl]:
    """A fresh embedded server with dataset 'pets' (FILES) holding USER_LABELS."""
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, admin=f"admin:{ADMIN_PW}",
                              log_level="error")
    async with EmbeddedServer(settings) as server, UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        record = await admin.request("POST", "/v1/classify/datasets/create",  # as the web UI makes one
                                     json={"name": "pets", "project": 1, "licence": 1, "tags": ""})
        pk = int(record["pk"])
        for name in FILES:
            await admin.request("POST", f"/v1/datasets/{pk}/files/{name}", data=name.encode(),
                                headers={"Content-Disposition": f'attachment; filename="{name}"'})
        for name, labels in USER_LABELS.items():
            await admin.request("PATCH", f"/v1/classify/datasets/{pk}/categories",
                                json={"method": "add", "images": [name], "categories": labels})
        access = ServerAccess(admin.node_io(), retry_s=1.0, initial_delay_s=0.01, max_delay_s=0.05)
        yield Ufdl(admin, access, pk)


async def test_add_and_remove_answer_the_changes_and_clear_removes_every_label(ufdl: Ufdl) -> None:
    """PATCH add gives labels (already held ones are no change), PATCH remove takes them,
    DELETE .../clear empties the dataset's labels; the files stay."""
    assert await add_labels(ufdl.access, ufdl.pk, ["a.jpg", "c.jpg"], ["dog"]) == {"c.jpg": ["dog"]}
    assert await remove_labels(ufdl.access, ufdl.pk, ["b.jpg"], ["pet", "wolf"]) == {"b.jpg": ["pet"]}
    assert await ufdl.labels() == {"a.jpg": ["dog"], "b.jpg": ["cat"], "c.jpg": ["bird", "dog"],
                                   "notes.txt": ["keep"]}
    assert await add_labels(ufdl.access, ufdl.pk, [], ["dog"]) == {}  # nothing to do: no call
    await clear_labels(ufdl.access, ufdl.pk)
    assert await ufdl.labels() == {}
    record = await ufdl.admin.request("GET", f"/v1/datasets/{ufdl.pk}")
    assert sorted(record["files"]) == sorted(FILES)


async def test_predictions_set_only_the_predicted_files_labels(ufdl: Ufdl) -> None:
    """Each predicted file ends up with just its prediction; a file predicted None and a file
    not predicted keep the labels the user gave them."""
    calls = await store_predictions(ufdl.access, ufdl.pk, {"a.jpg": "dog", "b.jpg": "dog", "c.jpg": None})
    assert calls == 3  # add dog to b; remove cat and pet from b (a already holds dog)
    assert await ufdl.labels() == {"a.jpg": ["dog"], "b.jpg": ["dog"], "c.jpg": ["bird"],
                                   "notes.txt": ["keep"]}


async def test_a_second_store_replaces_the_first_ones_labels(ufdl: Ufdl) -> None:
    """Two predicts in a row: the second's labels replace the first's, none duplicated."""
    await store_predictions(ufdl.access, ufdl.pk, {"a.jpg": "cat", "b.jpg": "dog", "c.jpg": "dog"})
    await store_predictions(ufdl.access, ufdl.pk, {"a.jpg": "dog", "b.jpg": "dog", "c.jpg": "cat"})
    assert await ufdl.labels() == {"a.jpg": ["dog"], "b.jpg": ["dog"], "c.jpg": ["cat"],
                                   "notes.txt": ["keep"]}
    assert await store_predictions(ufdl.access, ufdl.pk, {"a.jpg": "dog", "c.jpg": "cat"}) == 0


async def test_clear_removes_every_label_first_when_asked(ufdl: Ufdl) -> None:
    """clear=True (a template's clear_dataset): the dataset holds just the predictions after."""
    await store_predictions(ufdl.access, ufdl.pk, {"a.jpg": "cat", "b.jpg": None}, clear=True)
    assert await ufdl.labels() == {"a.jpg": ["cat"]}


async def test_a_failure_part_way_fails_the_job_with_one_line_and_loses_no_label(ufdl: Ufdl) -> None:
    """A prediction for a file the dataset lacks: the server refuses that call; the job fails
    with one line saying how far it got. Labels are added before old ones are removed, so
    'a.jpg' holds its old label and its new one, never none."""
    with pytest.raises(JobFailed) as failed:
        await store_predictions(ufdl.access, ufdl.pk, {"a.jpg": "cat", "ghost.jpg": "dog"})
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"dataset {ufdl.pk}: storing the predictions stopped after 1 label call(s): ")
    assert "ghost.jpg" in message and message.endswith("(labels already written stay)")
    labels = await ufdl.labels()
    assert labels["a.jpg"] == ["cat", "dog"] and labels["b.jpg"] == ["cat", "pet"]


async def test_a_missing_dataset_fails_with_one_line(ufdl: Ufdl) -> None:
    """Storing into a dataset the server does not have: one line, no call after the read."""
    with pytest.raises(JobFailed, match=r"^dataset 999: storing the predictions stopped after 0 label call"):
        await store_predictions(ufdl.access, 999, {"a.jpg": "cat"})


def test_the_plan_adds_each_label_once_and_removes_the_others() -> None:
    """Adds and removes grouped by label, images sorted; empty predictions change nothing."""
    changes = plan_predictions({"x": ["a", "b"], "y": ["b"], "z": ["c"]},
                               {"x": "c", "y": "c", "z": "", "w": "a"})
    assert changes.add == {"a": ["w"], "c": ["x", "y"]}
    assert changes.remove == {"a": ["x"], "b": ["x", "y"]}
    assert changes.calls == 4


async def test_set_labels_posts_each_files_labels(aiohttp_server: Any) -> None:
    """POST {file: [labels]}: the real server makes each named file's labels exactly its list
    ([] removes them) and answers what it set; files not named keep theirs."""
    labels: dict[str, list[str]] = {"a.jpg": ["dog"], "b.jpg": ["cat"], "c.jpg": ["bird"]}
    bodies: list[Any] = []

    async def set_categories(request: web.Request) -> web.Response:  # the backend's set_categories
        body = await request.json()
        bodies.append(body)
        for name, values in body.items():
            labels.pop(name, None)
            if values:
                labels[name] = values
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/classify/datasets/5/categories", set_categories)
    app.router.add_post("/v1/auth/obtain", _tokens)
    server = await aiohttp_server(app)
    async with Transport(str(server.make_url("")).rstrip("/"), "u", "pw") as transport:
        access = ServerAccess(transport.node_io(), retry_s=1.0)
        reply = await set_labels(access, 5, {"a.jpg": ["pet", "cat", "cat"], "b.jpg": []})
    assert bodies == [{"a.jpg": ["cat", "pet"], "b.jpg": []}]
    assert reply == {"a.jpg": ["cat", "pet"], "b.jpg": []}
    assert labels == {"a.jpg": ["cat", "pet"], "c.jpg": ["bird"]}
