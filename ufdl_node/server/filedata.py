"""Routes for what a dataset keeps per file beside its bytes: categories and metadata.

As the real server's views (UFDL-API.md section 8):

- image classification (``/v1/classify/datasets``, ufdl-image-classification-app) and
  spectrum classification (``/v1/spectra/datasets``, ufdl-spectrum-classification-app),
  the same ``CategoriesViewSet``: ``GET .../categories`` → ``{file: [category, ...]}`` for
  the files that have any; ``GET .../categories/{file}`` → that file's list (``[]`` for an
  unlabelled or unknown file); ``PATCH .../categories`` ``{"method": "add"|"remove",
  "images": [...], "categories": [...]}`` → just the changes made; ``POST .../categories``
  ``{file: [category, ...]}`` → sets those files' categories (``[]`` removes them) and
  answers the body. Any other method (DELETE) is a 405. A file the dataset lacks is a
  400, and nothing changes;
- every dataset (``/v1/datasets`` and the domain prefixes): ``GET .../metadata`` →
  ``{file: metadata}``, ``GET``/``POST .../metadata/{file}`` ``{"metadata": str}``
  (``POST`` answers what it stored). ``DELETE .../clear`` sets every file's to ``""``.

Who may change a dataset is ``datasets.dataset_to_change``'s rule.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..logs import get_logger
from . import domain_store as ds
from . import records_store as rs
from .common import ApiError, identify, read_json, read_object, store_of
from .datasets import DOMAIN_PREFIXES, Handler, check_file_name, dataset_or_404, dataset_to_change, no_file

log = get_logger("ufdl_node.server.filedata")

CATEGORY_KEYS = frozenset({"method", "images", "categories"})
CATEGORY_DOMAINS = ("ic", "sc")


def _labels(value: Any, key: str, *, empty: bool) -> list[str]:
    """A list of distinct non-empty strings (`empty`: [] allowed); 400 naming `key` otherwise."""
    if not isinstance(value, list) or (not value and not empty) \
            or not all(isinstance(s, str) and s for s in value) or len(set(value)) != len(value):
        kind = "a" if empty else "a non-empty"
        raise ApiError(400, f"{key}: must be {kind} list of distinct non-empty strings",
                       extra={key: ["Not a valid list."]})
    return value


def _categories_get(domain: str) -> Handler:
    async def categories_get(request: web.Request) -> web.Response:
        identify(request)
        dataset = dataset_or_404(request, domain)
        return web.json_response(rs.categories(store_of(request.app), dataset["pk"]))
    return categories_get


def _categories_of_file(domain: str) -> Handler:
    async def categories_of_file(request: web.Request) -> web.Response:
        identify(request)
        dataset = dataset_or_404(request, domain)
        name = request.match_info["name"]
        return web.json_response(ds.categories_of(store_of(request.app), dataset["pk"], name))
    return categories_of_file


def _categories_modify(domain: str) -> Handler:
    async def categories_modify(request: web.Request) -> web.Response:
        """PATCH {"method", "images", "categories"}: add or remove each category on each file."""
        dataset = dataset_to_change(request, domain)
        body = await read_object(request)
        unknown = sorted(set(body) - CATEGORY_KEYS)
        if unknown:
            raise ApiError(400, f"categories: unknown key(s) {unknown}; allowed: {sorted(CATEGORY_KEYS)}")
        method = body.get("method")
        if method not in ("add", "remove"):
            raise ApiError(400, 'method: must be "add" or "remove"',
                           extra={"method": ["Not a valid choice."]})
        images = _labels(body.get("images"), "images", empty=False)
        labels = _labels(body.get("categories"), "categories", empty=False)
        try:
            changes = rs.modify_categories(store_of(request.app), dataset["pk"], images, labels,
                                           add=method == "add")
        except KeyError as e:
            raise no_file(dataset, e) from None
        log.info("categories changed", dataset_pk=dataset["pk"], method=method, files=len(changes))
        return web.json_response(changes)
    return categories_modify


def _categories_set(domain: str) -> Handler:
    async def categories_set(request: web.Request) -> web.Response:
        """POST {file: [category, ...]}: set each named file's categories; answers the body."""
        dataset = dataset_to_change(request, domain)
        body = await read_object(request)
        wanted = {name: _labels(value, name, empty=True) for name, value in body.items()}
        try:
            ds.set_categories(store_of(request.app), dataset["pk"], wanted)
        except ds.NoSuchFile as e:
            raise no_file(dataset, e) from None
        log.info("categories set", dataset_pk=dataset["pk"], files=len(wanted))
        return web.json_response(wanted)
    return categories_set


# -- file metadata ------------------------------------------------------------------------------


def _metadata_all(domain: str | None) -> Handler:
    async def metadata_all(request: web.Request) -> web.Response:
        identify(request)
        dataset = dataset_or_404(request, domain)
        return web.json_response(ds.metadata(store_of(request.app), dataset["pk"]))
    return metadata_all


def _metadata_get(domain: str | None) -> Handler:
    async def metadata_get(request: web.Request) -> web.Response:
        identify(request)
        dataset = dataset_or_404(request, domain)
        try:
            value = ds.metadata_of(store_of(request.app), dataset["pk"], request.match_info["name"])
        except ds.NoSuchFile as e:
            raise no_file(dataset, e) from None
        return web.json_response({"metadata": value})
    return metadata_get


def _metadata_set(domain: str | None) -> Handler:
    async def metadata_set(request: web.Request) -> web.Response:
        dataset = dataset_to_change(request, domain)
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) != {"metadata"} or not isinstance(body["metadata"], str):
            raise ApiError(400, 'metadata: the body must be {"metadata": "<text>"}',
                           extra={"metadata": ["Not a valid string."]})
        name = check_file_name(request.match_info["name"])
        try:
            ds.set_metadata(store_of(request.app), dataset["pk"], name, body["metadata"])
        except ds.NoSuchFile as e:
            raise no_file(dataset, e) from None
        return web.json_response({"metadata": body["metadata"]})
    return metadata_set


def _metadata_routes(prefix: str, domain: str | None) -> list[tuple[str, str, Handler]]:
    path = prefix + r"/{pk:\d+}/metadata"
    return [("GET", path, _metadata_all(domain)), ("GET", path + "/{name:.+}", _metadata_get(domain)),
            ("POST", path + "/{name:.+}", _metadata_set(domain))]


def _category_routes(domain: str) -> list[tuple[str, str, Handler]]:
    path = DOMAIN_PREFIXES[domain] + r"/{pk:\d+}/categories"
    return [("GET", path, _categories_get(domain)), ("PATCH", path, _categories_modify(domain)),
            ("POST", path, _categories_set(domain)),
            ("GET", path + "/{name:.+}", _categories_of_file(domain))]


ROUTES: list[tuple[str, str, Handler]] = [
    *(route for domain in CATEGORY_DOMAINS for route in _category_routes(domain)),
    *_metadata_routes("/v1/datasets", None),
    *(route for code, prefix in DOMAIN_PREFIXES.items() for route in _metadata_routes(prefix, code)),
]
