"""Docker-image and pretrained-model records as handlers read them (UFDL-API.md section 8).

On the real server the records come with its migrations. On a server without any (a fresh
embedded one, strict mode), each test first creates one as the admin user.
"""
import uuid

import pytest

from _ufdl import error, need_ordinary_worker, ok, ufdl_test

DOCKER_FIELDS = {"pk", "name", "version", "url", "registry_url", "registry_username", "registry_password",
                 "cuda_version", "framework", "domain", "tasks", "min_hardware_generation", "cpu"}
PRETRAINED_FIELDS = {"pk", "url", "description", "name", "metadata", "framework", "domain", "licence"}


async def a_record(api, what, body):
    """The first record of `what`, created as admin (strict mode only) when there is none."""
    found = ok(await api.list(what, {}, as_="worker"))
    assert isinstance(found, list), f"{what}/list should answer a list: {found!r}"
    if found:
        return found[0]
    if not api.cfg.strict:
        pytest.skip(f"the server has no {what} records to check")
    return ok(await api.call("POST", f"/v1/{what}/create", as_="admin", json=body), 201)


async def docker_record(api):
    return await a_record(api, "docker", {
        "name": "conformance", "version": uuid.uuid4().hex[:8], "url": "example.org/conformance:1",
        "registry_url": "example.org", "registry_username": "public", "registry_password": "public",
        "cuda_version": "11.1", "framework": {"name": "conformance", "version": "1"}, "domain": "ic",
        "tasks": ["Train"], "min_hardware_generation": "Pascal", "cpu": False, "licence": "Apache 2.0"})


@ufdl_test
async def test_a_docker_record_nests_cuda_framework_and_hardware(api):
    """GET /v1/docker/{pk} shows cuda_version, framework and min_hardware_generation as objects."""
    record = ok(await api.call("GET", f"/v1/docker/{(await docker_record(api))['pk']}", as_="worker"))
    assert DOCKER_FIELDS <= set(record), f"record lacks {DOCKER_FIELDS - set(record)}: {record}"
    assert {"pk", "version", "full_version", "min_driver_version"} <= set(record["cuda_version"]), record
    assert {"pk", "name", "version"} <= set(record["framework"]), record
    generation = record["min_hardware_generation"]
    assert generation is None or {"pk", "generation", "min_compute_capability",
                                  "max_compute_capability"} <= set(generation), record
    assert isinstance(record["cpu"], bool) and isinstance(record["tasks"], list), record


@ufdl_test
async def test_docker_create_is_for_admins(api):
    """An ordinary user creating a Docker-image record gets 403."""
    need_ordinary_worker(api.cfg)
    error(await api.call("POST", "/v1/docker/create", as_="worker", json={"name": "x"}), 403, api.cfg)


@ufdl_test
async def test_a_pretrained_model_record_has_its_fields(api):
    """GET /v1/pretrained-models/{pk} shows url, description, name, metadata, framework, domain, licence."""
    made = await a_record(api, "pretrained-models", {
        "name": f"conformance-{uuid.uuid4().hex[:8]}", "description": "conformance",
        "url": "https://example.org/model.pth", "metadata": {},
        "framework": {"name": "conformance", "version": "1"}, "domain": "ic", "licence": "Apache 2.0"})
    record = ok(await api.call("GET", f"/v1/pretrained-models/{made['pk']}", as_="worker"))
    assert PRETRAINED_FIELDS <= set(record), f"record lacks {PRETRAINED_FIELDS - set(record)}: {record}"


@ufdl_test
async def test_missing_records_are_404(api):
    """A Docker-image or pretrained-model pk that does not exist answers 404 JSON."""
    for path in ("/v1/docker/987654321", "/v1/pretrained-models/987654321"):
        error(await api.call("GET", path, as_="worker"), 404, api.cfg)
