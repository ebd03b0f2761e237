"""A pretrained model's file on the embedded server: staff send it, any user downloads it with
``POST /v1/pretrained-models/{pk}/download`` (what the UFDL Python client and the docker
handler call); a record without a file, or no record, is a 404 naming it."""

from __future__ import annotations

import uuid

from .conftest import Api

RESNET = {"description": "resnet18 on ImageNet", "url": "https://example.org/resnet18.pth", "metadata": {},
          "framework": {"name": "mmclassification", "version": "0.25.0"}, "domain": "ic",
          "licence": "Apache 2.0"}


async def _record(api: Api) -> int:
    made = await api.ok("POST", "/v1/pretrained-models/create", 201, as_="admin",
                        json={**RESNET, "name": uuid.uuid4().hex[:8]})
    return int(made["pk"])


async def test_a_pretrained_models_file_is_uploaded_by_staff_and_downloaded_by_any_user(api: Api) -> None:
    pk = await _record(api)
    weights = bytes(range(256)) * 1000

    missing = await api.call("POST", f"/v1/pretrained-models/{pk}/download", json={"filetype": "data"})
    assert missing.status == 404 and f"Pretrained model {pk} has no file" in missing.body.decode()
    refused = await api.call("POST", f"/v1/pretrained-models/{pk}/upload", data=weights)
    assert refused.status == 403
    await api.ok("POST", f"/v1/pretrained-models/{pk}/upload", as_="admin", data=weights)

    got = await api.call("POST", f"/v1/pretrained-models/{pk}/download", json={"filetype": "data"})
    assert (got.status, got.body) == (200, weights)
    again = await api.ok("POST", f"/v1/pretrained-models/{pk}/upload", as_="admin", data=b"v2")
    assert again["pk"] == pk
    assert (await api.call("POST", f"/v1/pretrained-models/{pk}/download")).body == b"v2"


async def test_no_such_pretrained_model_is_404(api: Api) -> None:
    assert (await api.call("POST", "/v1/pretrained-models/999999/download")).status == 404
    assert (await api.call("POST", "/v1/pretrained-models/999999/upload", as_="admin",
                           data=b"x")).status == 404
