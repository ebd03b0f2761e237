"""Docker-image and pretrained-model records: the real server's shapes, admin-only creation, no leaks."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs

from .conftest import Api, MakeApi, MakeServer

MMCLASS = {"name": "mmclassification",
           "url": "example.org/waikatodatamining/mmclassification:0.25.0_cuda11.1",
           "registry_url": "example.org", "registry_username": "public", "registry_password": "public",
           "cuda_version": "11.1", "framework": {"name": "mmclass", "version": "0.25.0"}, "domain": "ic",
           "tasks": ["Train", "Predict"], "min_hardware_generation": "Pascal", "cpu": False,
           "licence": "Apache 2.0"}
RESNET = {"description": "resnet18 on ImageNet", "url": "https://example.org/resnet18.pth",
          "metadata": {"epochs": 100}, "framework": {"name": "resnet18", "version": "mmclass_0.25.0"},
          "domain": "ic", "licence": "Apache 2.0"}


def version() -> str:
    return uuid.uuid4().hex[:8]


async def docker(api: Api, **fields: Any) -> dict[str, Any]:
    body = {**MMCLASS, "version": version(), **fields}
    return await api.ok("POST", "/v1/docker/create", 201, as_="admin", json=body)  # type: ignore[no-any-return]


async def test_a_docker_record_has_the_real_servers_shape(api: Api) -> None:
    """GET /v1/docker/{pk} nests cuda_version, framework and min_hardware_generation like the real server."""
    made = await docker(api)
    got = await api.ok("GET", f"/v1/docker/{made['pk']}")
    assert got == made
    assert got["cuda_version"] == {"pk": got["cuda_version"]["pk"], "version": "11.1",
                                   "full_version": "11.1.0", "min_driver_version": "455.23.05"}
    assert got["framework"] == {"pk": got["framework"]["pk"], "name": "mmclass", "version": "0.25.0"}
    generation = got["min_hardware_generation"]
    assert (generation["generation"], generation["min_compute_capability"]) == ("Pascal", 6.0)
    assert (got["domain"], got["tasks"], got["cpu"], got["licence"], got["registry_password"]) == \
        ("ic", ["Train", "Predict"], False, "Apache 2.0", "public")


async def test_a_cpu_image_may_have_no_hardware_generation(api: Api) -> None:
    """min_hardware_generation null is kept as null (CPU images)."""
    made = await docker(api, min_hardware_generation=None, cpu=True, cuda_version="0.0")
    assert made["min_hardware_generation"] is None and made["cpu"] is True


async def test_docker_list_takes_a_filter_spec(api: Api) -> None:
    """POST /v1/docker/list filters, by relation fields too (framework.name)."""
    made = await docker(api, framework={"name": "only-here", "version": "1"})
    found = await api.ok("POST", "/v1/docker/list", json={
        "expressions": [{"type": "exact", "field": "framework.name", "value": "only-here"}]})
    assert [d["pk"] for d in found] == [made["pk"]]


async def test_an_ordinary_user_may_not_create_records(api: Api) -> None:
    """Creating a Docker-image or a pretrained-model record as a worker is 403."""
    assert (await api.call("POST", "/v1/docker/create", json={**MMCLASS, "version": version()})).status == 403
    assert (await api.call("POST", "/v1/pretrained-models/create",
                           json={**RESNET, "name": version()})).status == 403


@pytest.mark.parametrize("change", [{"cuda_version": "99.9"}, {"min_hardware_generation": "Babbage"},
                                    {"framework": "mmclass"}, {"tasks": ["Dance"]}, {"cpu": "no"},
                                    {"licence": "none"}, {"domain": "xx"}, {"colour": "red"}, {"url": ""}])
async def test_a_bad_docker_record_is_400(api: Api, change: dict[str, Any]) -> None:
    """Unknown CUDA version, generation, licence, domain or key, or a malformed field: 400 with a detail."""
    reply = await api.call("POST", "/v1/docker/create", as_="admin",
                           json={**MMCLASS, "version": version(), **change})
    assert reply.status == 400 and reply.json["detail"], reply


async def test_the_same_docker_image_twice_is_400(api: Api) -> None:
    """Name, version and CUDA version are unique."""
    made = await docker(api)
    again = await api.call("POST", "/v1/docker/create", as_="admin",
                           json={**MMCLASS, "version": made["version"]})
    assert again.status == 400


async def test_registry_credentials_never_reach_the_log(make_server: MakeServer, make_api: MakeApi) -> None:
    """Creating records (and failing to) logs neither the registry password nor the user name."""
    api = make_api(await make_server())
    secret, user = f"pw-{uuid.uuid4().hex}", f"user-{uuid.uuid4().hex}"
    with capture_logs() as logs:
        await docker(api, registry_password=secret, registry_username=user)
        await api.call("POST", "/v1/docker/create", as_="admin",
                       json={**MMCLASS, "version": version(), "registry_password": secret,
                             "cuda_version": "x"})
        await api.call("POST", "/v1/docker/create", as_="admin",
                       json={**MMCLASS, "version": version(), "registry_password": [secret]})
    assert logs and secret not in repr(logs) and user not in repr(logs)


async def test_a_bad_password_type_is_400_without_echoing_it(api: Api) -> None:
    """A registry_password that is not a string is 400, and the answer does not repeat it."""
    reply = await api.call("POST", "/v1/docker/create", as_="admin",
                           json={**MMCLASS, "version": version(), "registry_password": {"v": "s3cr3t-value"}})
    assert reply.status == 400 and b"s3cr3t-value" not in reply.body


async def test_a_pretrained_model_record_has_the_real_servers_shape(api: Api) -> None:
    """Create (admin) answers 201; GET and list show url, description, metadata, framework object, data."""
    made = await api.ok("POST", "/v1/pretrained-models/create", 201, as_="admin",
                        json={**RESNET, "name": version()})
    assert set(made) == {"pk", "url", "description", "name", "metadata", "framework", "domain", "licence",
                         "data", "creator", "creation_time", "deletion_time"}
    assert (made["metadata"], made["framework"]["name"], made["domain"], made["data"]) == \
        ({"epochs": 100}, "resnet18", "ic", False)
    assert await api.ok("GET", f"/v1/pretrained-models/{made['pk']}") == made
    found = await api.ok("POST", "/v1/pretrained-models/list", json={
        "expressions": [{"type": "exact", "field": "name", "value": made["name"]}]})
    assert found == [made]


async def test_missing_records_are_404_json(api: Api) -> None:
    """A pk that names no record is 404 JSON on both resources."""
    for path in ("/v1/docker/999999", "/v1/pretrained-models/999999"):
        reply = await api.call("GET", path)
        assert reply.status == 404 and reply.json["detail"]


async def test_a_job_output_downloads_by_its_own_pk(api: Api) -> None:
    """GET /v1/job-outputs/{pk} is the output record; POST .../download its exact bytes (a model)."""
    node = await api.node()
    job = await api.started(node)
    data = bytes(range(256)) * 100
    out = (await api.upload(job, node, "model", "Compressed<Model>", data)).json
    assert await api.ok("GET", f"/v1/job-outputs/{out['pk']}") == out
    reply = await api.call("POST", f"/v1/job-outputs/{out['pk']}/download")
    assert (reply.status, reply.body) == (200, data)
    assert (await api.call("POST", "/v1/job-outputs/999999/download")).status == 404


@pytest.mark.parametrize("route", ["/v1/docker/create", "/v1/pretrained-models/create"])
async def test_a_refused_create_leaves_no_new_framework_behind(api: Api, route: str) -> None:
    """A create naming a new framework but refused for its licence makes no framework row: one made
    later is numbered after a framework first stored after the refusal."""
    def body(**fields: Any) -> dict[str, Any]:
        if route == "/v1/docker/create":
            return {**MMCLASS, "version": version(), **fields}
        return {**RESNET, "name": version(), **fields}

    refused, later = ({"name": f"fw-{version()}", "version": "1"} for _ in range(2))
    reply = await api.call("POST", route, as_="admin", json=body(framework=refused, licence="none"))
    assert reply.status == 400, reply
    first = await api.ok("POST", route, 201, as_="admin", json=body(framework=later))
    second = await api.ok("POST", route, 201, as_="admin", json=body(framework=refused))
    assert second["framework"]["pk"] > first["framework"]["pk"]
