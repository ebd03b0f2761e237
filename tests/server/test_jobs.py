"""Jobs over HTTP: permissions, admin actions, cancel/abort semantics, templates and create-job rules."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from ufdl_node.server import EmbeddedServer

from .conftest import TEMPLATE, Api


async def test_acquire_race_has_exactly_one_winner(api: Api) -> None:
    """Twenty nodes racing for one job over HTTP: one 200, nineteen 406, and the job names the winner."""
    nodes = [await api.node() for _ in range(20)]
    job = await api.job()
    replies = await asyncio.gather(*(api.call("GET", f"/v1/jobs/{job['pk']}/acquire", node=n)
                                     for n in nodes))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] + [406] * 19, statuses
    winner = next(n for n, r in zip(nodes, replies, strict=True) if r.status == 200)
    assert (await api.get_job(job))["node"] == winner["pk"]


@pytest.mark.parametrize("action", ["start", "progress", "finish", "reset", "release", "output"])
async def test_node_b_cannot_touch_node_a_job(api: Api, action: str) -> None:
    """Node B gets 403 on every worker action on node A's job, and the job does not move."""
    a, b = await api.node(), await api.node()
    job = await (api.held(a) if action in ("start", "release") else api.started(a))
    if action == "reset":
        await api.finish(job, a, error="x")
        job = await api.get_job(job)
    pk = job["pk"]
    if action == "start":
        reply = await api.call("POST", f"/v1/jobs/{pk}/start", node=b, json={"send_notification": "x"})
    elif action == "progress":
        reply = await api.call("POST", f"/v1/jobs/{pk}/progress/0.5", node=b)
    elif action == "finish":
        reply = await api.finish(job, b, error="not mine")
    elif action == "output":
        reply = await api.upload(job, b, "log", "json")
    else:
        reply = await api.call("DELETE", f"/v1/jobs/{pk}/{action}", node=b)
    assert reply.status == 403, reply
    assert await api.get_job(job) == job


@pytest.mark.parametrize("method,suffix", [("DELETE", "abort"), ("DELETE", "cancel"), ("PATCH", ""),
                                           ("PUT", ""), ("DELETE", ""), ("DELETE", "hard"),
                                           ("DELETE", "reinstate"), ("DELETE", "outputs/log/json")])
async def test_non_admin_cannot_use_admin_job_actions(api: Api, method: str, suffix: str) -> None:
    """An ordinary user gets 403 on abort, cancel, edits, deletes, reinstate and output delete."""
    node = await api.node()
    job = await api.started(node)
    assert (await api.upload(job, node, "log", "json")).status == 200
    job = await api.get_job(job)
    path = f"/v1/jobs/{job['pk']}" + (f"/{suffix}" if suffix else "")
    reply = await api.call(method, path, node=node, json={"description": "x"})
    assert reply.status == 403, reply
    assert await api.get_job(job) == job


async def test_non_admin_cannot_import_templates(api: Api) -> None:
    """Template import is for staff only."""
    spec = dict(TEMPLATE, name="forbidden")
    assert (await api.call("POST", "/v1/job-templates/import", json=spec)).status == 403


async def test_ordinary_user_cannot_patch_another_node(api: Api) -> None:
    """PATCH of another node (or without Node-Id) is 403 for an ordinary user."""
    mine, other = await api.node(), await api.node()
    for node in (mine, None):
        reply = await api.call("PATCH", f"/v1/nodes/{other['pk']}", node=node, json={"cpu_mem": 1})
        assert reply.status == 403
    assert (await api.get_node(other))["cpu_mem"] == other["cpu_mem"]


async def test_hard_delete_removes_the_job_and_its_output_files(
        api: Api, shared_server: EmbeddedServer) -> None:
    """DELETE .../hard (admin) answers the job, removes it and its output files, and frees the node."""
    node = await api.node()
    job = await api.started(node)
    out = (await api.upload(job, node, "log", "json", b"bytes")).json
    path = shared_server.settings.data_dir / "outputs" / str(out["pk"])
    assert path.is_file()
    gone = await api.ok("DELETE", f"/v1/jobs/{job['pk']}/hard", as_="admin")
    assert gone["pk"] == job["pk"]
    assert (await api.call("GET", f"/v1/jobs/{job['pk']}")).status == 404
    assert not path.exists()
    assert (await api.get_node(node))["current_job"] is None


async def test_soft_delete_hides_from_lists_and_reinstate_restores(api: Api) -> None:
    """Soft delete sets deletion_time and hides the job from lists; reinstate undoes both."""
    job = await api.job(description="soft-delete-me")
    spec = {"expressions": [{"type": "exact", "field": "pk", "value": job["pk"]}]}
    assert (await api.call("DELETE", f"/v1/jobs/{job['pk']}", as_="admin")).status == 204
    assert (await api.get_job(job))["deletion_time"] is not None
    assert await api.ok("POST", "/v1/jobs/list", json=spec) == []
    await api.ok("DELETE", f"/v1/jobs/{job['pk']}/reinstate", as_="admin")
    assert [j["pk"] for j in await api.ok("POST", "/v1/jobs/list", json=spec)] == [job["pk"]]


async def test_abort_keeps_current_job_so_finish_answers_200(api: Api) -> None:
    """Abort: job CREATED and unheld, node still working; its finish answers 200 and frees it."""
    node = await api.node()
    job = await api.started(node)
    aborted = await api.ok("DELETE", f"/v1/jobs/{job['pk']}/abort", as_="admin")
    assert (aborted["node"], aborted["start_time"]) == (None, None)
    assert (await api.get_node(node))["current_job"] == job["pk"]
    assert (await api.finish(job, node, error="aborted")).status == 200
    assert (await api.get_node(node))["current_job"] is None
    assert (await api.get_job(job))["error_reason"] is None


async def test_cancel_before_start(api: Api) -> None:
    """Cancel before start: error_reason "Cancelled", is_cancelled false, start_time null."""
    job = await api.job()
    got = await api.ok("DELETE", f"/v1/jobs/{job['pk']}/cancel", as_="admin")
    assert (got["error_reason"], got["is_cancelled"], got["start_time"]) == ("Cancelled", False, None)


async def test_acquired_then_cancelled_job_starts_and_reads_cancelled(api: Api) -> None:
    """A job cancelled between acquire and start can start, then reads CANCELLED; finish frees the node."""
    node = await api.node()
    job = await api.held(node)
    await api.ok("DELETE", f"/v1/jobs/{job['pk']}/cancel", as_="admin")
    started = await api.ok("POST", f"/v1/jobs/{job['pk']}/start", node=node,
                           json={"send_notification": "x"})
    assert (started["is_cancelled"], started["error_reason"]) == (True, "Cancelled")
    assert started["end_time"] is None
    assert (await api.finish(job, node)).status == 200
    assert (await api.get_node(node))["current_job"] is None


async def test_admin_patch_changes_only_the_description(api: Api) -> None:
    """PATCH (admin) changes the description and ignores lifecycle fields."""
    job = await api.job()
    got = await api.ok("PATCH", f"/v1/jobs/{job['pk']}", as_="admin",
                       json={"description": "new", "node": 5, "start_time": "x"})
    assert (got["description"], got["node"], got["start_time"]) == ("new", None, None)


# -- templates and create-job ----------------------------------------------------------------------

TRAIN = {
    "name": "train-test", "version": 1, "description": "", "scope": "public", "licence": "MIT",
    "domain": "ic",
    "specific": {"job_type": "Train<Domain<'Image Classification'>, Framework<'tensorflow', '1.14'>>",
                 "executor_class": "x.Y", "required_packages": "tf",
                 "parameters": {"epochs": {"types": ["int"], "help": "how many"},
                                "lr": {"types": ["float"], "default": 0.1, "help": "rate"}}},
}
DATASET = {"value": 1, "type": "PK<Dataset<Domain<'Image Classification'>>>"}


async def _train_template(api: Api) -> int:
    return await api.template(TRAIN)


async def test_workable_template_carries_its_contract(api: Api) -> None:
    """A workable template shows its contract type, executor_class, packages and parameters."""
    got = await api.ok("GET", f"/v1/job-templates/{await _train_template(api)}")
    assert got["type"] == "Train<Domain<'Image Classification'>, Framework<'tensorflow', '1.14'>>"
    assert (got["executor_class"], got["required_packages"]) == ("x.Y", "tf")
    assert set(got["parameters"]) == {"epochs", "lr"} and "body" not in got


@pytest.mark.parametrize("where,key", [("top", "body"), ("top", "inputs"), ("specific", "body"),
                                       ("specific", "inputs")])
async def test_import_refuses_body_and_inputs_keys(api: Api, where: str, key: str) -> None:
    """Import with a body or inputs key (top level or in specific) answers 400."""
    spec: dict[str, Any] = copy.deepcopy(TEMPLATE)
    spec["name"] = f"bad-{where}-{key}"
    (spec if where == "top" else spec["specific"])[key] = {}
    assert (await api.call("POST", "/v1/job-templates/import", as_="admin", json=spec)).status == 400


async def test_import_of_an_unknown_licence_is_400(api: Api) -> None:
    """An unknown licence name answers 400 listing the known ones."""
    spec = dict(TEMPLATE, name="bad-licence", licence="WTFPL-9")
    reply = await api.call("POST", "/v1/job-templates/import", as_="admin", json=spec)
    assert reply.status == 400 and "Apache 2.0" in reply.json["detail"]


async def test_import_of_an_existing_name_and_version_replaces_it(api: Api) -> None:
    """Importing a name and version again soft-deletes the old template (its jobs keep it), as the
    real server's import does; the list shows one active template of that name and version."""
    old = await api.template()
    job = await api.job()
    new = await api.ok("POST", "/v1/job-templates/import", as_="admin", json=TEMPLATE)
    assert new["pk"] != old and new["version"] == TEMPLATE["version"]
    assert (await api.ok("GET", f"/v1/job-templates/{old}"))["deletion_time"] is not None
    assert (await api.ok("GET", f"/v1/jobs/{job['pk']}"))["template"]["pk"] == old
    found = await api.ok("POST", "/v1/job-templates/list", json={
        "expressions": [{"type": "exact", "field": "name", "value": TEMPLATE["name"]}]})
    assert [t["pk"] for t in found] == [new["pk"]]
    api.template_pk = new["pk"]


async def _create(api: Api, inputs: dict, params: dict):  # type: ignore[no-untyped-def]
    pk = await _train_template(api)
    return await api.call("POST", f"/v1/job-templates/{pk}/create-job", as_="admin",
                          json={"input_values": inputs, "parameter_values": params})


async def test_create_job_keeps_contract_inputs_and_drops_others(api: Api) -> None:
    """Train's dataset input is kept; an undeclared input is dropped."""
    reply = await _create(api, {"dataset": DATASET, "extra": DATASET},
                          {"epochs": {"value": 3, "type": "int"}})
    assert reply.status == 200 and reply.json["input_values"] == {"dataset": DATASET}


async def test_create_job_without_a_required_parameter_is_400(api: Api) -> None:
    """A parameter without a default must be given: 400 in the real server's words, also when
    an unknown parameter comes with it (the real server checks the template's own first)."""
    for params in ({}, {"nonsense": {"value": 1, "type": "int"}}):
        reply = await _create(api, {"dataset": DATASET}, params)
        missing = (400, "Required parameter 'epochs' is missing")
        assert (reply.status, reply.json.get("detail")) == missing, reply


async def test_create_job_without_a_contract_input_is_400(api: Api) -> None:
    """Train needs its dataset input: 400 without it."""
    assert (await _create(api, {}, {"epochs": {"value": 3, "type": "int"}})).status == 400


@pytest.mark.parametrize("params", [{"epochs": {"value": 3, "type": "int"},
                                     "nope": {"value": 1, "type": "int"}},
                                    {"epochs": {"value": 3, "type": "str"}},
                                    {"epochs": {"value": "three", "type": "int"}}])
async def test_create_job_with_unknown_parameter_or_wrong_type_is_406(api: Api, params: dict) -> None:
    """An unknown parameter, an undeclared type or a value of the wrong type answers 406."""
    assert (await _create(api, {"dataset": DATASET}, params)).status == 406


TYPED = {
    "name": "typed-test", "version": 1, "description": "", "scope": "public", "licence": "MIT",
    "specific": {"job_type": "Export", "executor_class": "x.Y", "required_packages": "",
                 "parameters": {"names": {"types": ["Array<str>"], "default": [], "help": "names"},
                                "image": {"types": ["Name<DockerImage>", "PK<DockerImage>"], "default": 1,
                                          "default_type": "PK<DockerImage>", "help": "an image"}}},
}


@pytest.mark.parametrize("params, status", [
    ({"names": {"value": ["a"], "type": "Array<str>"}}, 200),
    ({"names": {"value": ["a", 1], "type": "Array<str>"}}, 406),
    ({"image": {"value": 4, "type": "PK<DockerImage>"}}, 200),
    ({"image": {"value": "mmcls", "type": "Name<DockerImage>"}}, 200),
    ({"image": {"value": "mmcls", "type": "PK<DockerImage>"}}, 406),
])
async def test_create_job_checks_a_value_against_its_server_type(api: Api, params: dict, status: int) -> None:
    """Array<str>, PK<...> and Name<...> values are checked as the real server's types are: 406 when
    the value is not of the type it names."""
    pk = await api.template(TYPED)
    reply = await api.call("POST", f"/v1/job-templates/{pk}/create-job", as_="admin",
                           json={"input_values": {}, "parameter_values": params})
    assert reply.status == status, reply.body[:300]


async def test_a_parameter_type_is_matched_as_parsed_not_as_spelt(api: Api) -> None:
    """The real server parses a value's type: Framework<'a','1'> names Framework<'a', '1'> (the job
    keeps the template's spelling, as the real server echoes it); another type is still 406."""
    spelt = "PK<DockerImage<Domain<'Image Classification'>, Framework<'mmcls', '0.25.0'>>>"
    pk = await api.template({**TYPED, "name": "spelt-test", "specific": {
        **TYPED["specific"], "parameters": {"image": {"types": [spelt], "help": "an image"}}}})
    body = {"input_values": {}, "parameter_values": {"image": {"value": 4, "type": spelt.replace(", ", ",")}}}
    path = f"/v1/job-templates/{pk}/create-job"
    reply = await api.call("POST", path, as_="admin", json=body)
    assert reply.status == 200, reply
    assert reply.json["parameter_values"]["image"] == {"value": 4, "type": spelt}, reply
    body["parameter_values"]["image"]["type"] = spelt.replace("mmcls", "other")
    assert (await api.call("POST", path, as_="admin", json=body)).status == 406
