"""Licences and projects: what a dataset is made with (UFDL-API.md section 8).

``POST /v1/licences/list`` and ``POST /v1/projects/list`` take a filter spec, as the real
server's lists do, and answer its records: a licence is ``{pk, name, url, permissions,
conditions, limitations, domains}``, a project ``{pk, name, team, creator, creation_time,
deletion_time}``; ``GET /v1/licences/{pk}`` and ``/v1/projects/{pk}`` answer one. The
licences are the seeded ones (``store.LICENCES``); migration 4 makes one team and one project,
both called "default" (pk 1), so that a fresh server can take a dataset at once. Projects are
not made or changed here: the real server's teams and memberships are beyond this server.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from aiohttp import web

from .common import ApiError, identify, pk_of, read_json, store_of
from .filters import Column, Resource
from .views import compiled

LICENCE_URLS = {
    "Apache 2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "MIT": "https://opensource.org/licenses/MIT",
    "BSD 3-Clause": "https://opensource.org/licenses/BSD-3-Clause",
    "BSD 2-Clause": "https://opensource.org/licenses/BSD-2-Clause",
    "GPL v3": "https://www.gnu.org/licenses/gpl-3.0.html",
    "LGPL v3": "https://www.gnu.org/licenses/lgpl-3.0.html",
    "AGPL v3": "https://www.gnu.org/licenses/agpl-3.0.html",
    "MPL 2.0": "https://www.mozilla.org/en-US/MPL/2.0/",
    "CC BY 4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC0": "https://creativecommons.org/publicdomain/zero/1.0/",
}

LICENCES = Resource(
    from_sql="licences l", pk_sql="l.pk",
    fields={"pk": Column("l.pk", "int"), "name": Column("l.name", "str")})
PROJECTS = Resource(
    from_sql="projects p", pk_sql="p.pk", deletion_sql="p.deletion_time",
    fields={"pk": Column("p.pk", "int"), "name": Column("p.name", "str"),
            "team": Column("p.team", "int"), "creator": Column("p.creator", "int"),
            "creation_time": Column("p.creation_time", "time"),
            "deletion_time": Column("p.deletion_time", "time")})


def licence_json(row: sqlite3.Row, domains: list[str]) -> dict[str, Any]:
    # Permissions, conditions and limitations are not kept here: empty, as a new licence's are.
    return {"pk": row["pk"], "name": row["name"], "url": LICENCE_URLS.get(row["name"], ""),
            "permissions": [], "conditions": [], "limitations": [], "domains": domains}


def project_json(row: sqlite3.Row) -> dict[str, Any]:
    return {"pk": row["pk"], "name": row["name"], "team": row["team"], "creator": row["creator"],
            "creation_time": row["creation_time"], "deletion_time": row["deletion_time"]}


def _rows(request: web.Request, resource: Resource, spec: Any, pk: int | None = None) -> list[sqlite3.Row]:
    """The rows of a filter spec (few: licences and projects), or the one row `pk`."""
    query = compiled(spec, resource)
    where, params = (f"{resource.pk_sql} = ?", [pk]) if pk is not None else (query.where, query.params)
    order = "1" if pk is not None else query.order
    # from_sql, where and order come from this module and the filter compiler, never from a request.
    return list(store_of(request.app).db.execute(
        f"SELECT * FROM {resource.from_sql} WHERE {where} ORDER BY {order}", params))


def _domains(request: web.Request) -> list[str]:
    return list(store_of(request.app).domain_names().values())


async def licence_list(request: web.Request) -> web.Response:
    identify(request)
    domains = _domains(request)
    rows = _rows(request, LICENCES, await read_json(request))
    return web.json_response([licence_json(r, domains) for r in rows])


async def project_list(request: web.Request) -> web.Response:
    identify(request)
    return web.json_response([project_json(r) for r in _rows(request, PROJECTS, await read_json(request))])


async def licence_retrieve(request: web.Request) -> web.Response:
    identify(request)
    rows = _rows(request, LICENCES, None, pk_of(request))
    if not rows:
        raise ApiError(404, "Not found.")
    return web.json_response(licence_json(rows[0], _domains(request)))


async def project_retrieve(request: web.Request) -> web.Response:
    identify(request)
    rows = _rows(request, PROJECTS, None, pk_of(request))
    if not rows:
        raise ApiError(404, "Not found.")
    return web.json_response(project_json(rows[0]))


ROUTES = [
    ("POST", "/v1/licences/list", licence_list), ("GET", r"/v1/licences/{pk:\d+}", licence_retrieve),
    ("POST", "/v1/projects/list", project_list), ("GET", r"/v1/projects/{pk:\d+}", project_retrieve),
]
