"""The aiohttp application of the embedded server: routes, error middleware, startup.

``create_app(settings)`` builds the application; opening the database, the
signing key and the first users happens in its startup context, so the same
factory serves ``EmbeddedServer``, ``ufdl-node server`` and pytest-aiohttp.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..logs import get_logger
from ..settings import ServerSettings
from . import catalogue, datasets, domains, filedata, jobs, records, templates, views
from .auth import TokenIssuer, generate_password, hash_password, load_signing_key, verify_password
from .common import HTML_404, RUNTIME, SETTINGS, ApiError, Runtime, UploadCutShort, parse_error_detail
from .store import Store
from .ws import HUB, Hub

log = get_logger("ufdl_node.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# JSON bodies are small; output uploads stream past this limit (they never call read()).
MAX_JSON_BYTES = 2**20  # request bodies other than uploads (which stream): parsed whole, so kept small
_PK = r"{pk:\d+}"
# Only 0.<digits> and 1.<zeros> route, as on the real server; anything else is a 404.
_AMOUNT = r"{amount:0\.\d+|1\.0+}"
_OUTPUT = _PK + "/outputs/{name}/{type}"

ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/auth/obtain", views.obtain),
    ("POST", "/v1/auth/refresh", views.refresh),
    ("POST", "/v1/hardware/list", views.hardware_list),
    ("POST", "/v1/nodes/list", views.node_list),
    ("POST", "/v1/nodes/create", views.node_create),
    ("GET", "/v1/nodes/ping", views.node_ping),
    ("GET", f"/v1/nodes/{_PK}", views.node_retrieve),
    ("PUT", f"/v1/nodes/{_PK}", views.node_update),
    ("PATCH", f"/v1/nodes/{_PK}", views.node_update),
    ("DELETE", f"/v1/nodes/{_PK}", views.node_delete),
    ("POST", "/v1/job-templates/list", templates.template_list),
    ("POST", "/v1/job-templates/create", templates.template_create),
    ("POST", "/v1/job-templates/import", templates.template_import),
    ("GET", f"/v1/job-templates/{_PK}", templates.template_retrieve),
    ("POST", f"/v1/job-templates/{_PK}/create-job", jobs.create_job),
    ("POST", "/v1/jobs/list", jobs.job_list),
    ("GET", f"/v1/jobs/{_PK}", jobs.job_retrieve),
    ("PUT", f"/v1/jobs/{_PK}", jobs.job_update),
    ("PATCH", f"/v1/jobs/{_PK}", jobs.job_update),
    ("DELETE", f"/v1/jobs/{_PK}", jobs.job_soft_delete),
    ("DELETE", f"/v1/jobs/{_PK}/hard", jobs.job_hard_delete),
    ("DELETE", f"/v1/jobs/{_PK}/reinstate", jobs.job_reinstate),
    ("GET", f"/v1/jobs/{_PK}/acquire", jobs.acquire),
    ("POST", f"/v1/jobs/{_PK}/start", jobs.start),
    ("POST", f"/v1/jobs/{_PK}/progress/{_AMOUNT}", jobs.progress),
    ("POST", f"/v1/jobs/{_PK}/finish", jobs.finish),
    ("DELETE", f"/v1/jobs/{_PK}/reset", jobs.reset),
    ("DELETE", f"/v1/jobs/{_PK}/release", jobs.release),
    ("DELETE", f"/v1/jobs/{_PK}/abort", jobs.abort),
    ("DELETE", f"/v1/jobs/{_PK}/cancel", jobs.cancel),
    ("POST", f"/v1/jobs/{_OUTPUT}", jobs.add_output),
    ("GET", f"/v1/jobs/{_OUTPUT}", jobs.output_download),
    ("DELETE", f"/v1/jobs/{_OUTPUT}", jobs.output_delete),
    ("GET", f"/v1/jobs/{_OUTPUT}/info", jobs.output_info),
    *datasets.ROUTES,
    *filedata.ROUTES,
    *domains.ROUTES,
    *catalogue.ROUTES,
    *records.ROUTES,
]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON {"detail": ...}: ours, aiohttp's (404, 405, 413) and crashes."""
    quirks = request.app[SETTINGS].real_server_quirks
    try:
        return await handler(request)
    except ApiError as e:
        return e.response(quirks)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 404 and quirks:
            return web.Response(status=404, text=HTML_404, content_type="text/html")
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        detail = e.reason if e.status != 404 else "Not found."
        return web.json_response({"detail": detail}, status=e.status, headers=headers)
    except UploadCutShort as e:
        # Nothing to answer and nothing wrong here: the handler removed what it had received.
        log.info("upload cut short by the client", method=request.method, path=request.path,
                 received=e.received)
        return web.json_response({"detail": str(e)}, status=400)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        # The client went away mid-body (a killed worker, say): nothing wrong here, nothing to
        # answer (the response goes nowhere), and no traceback in the log.
        log.info("client went away mid-request", method=request.method, path=request.path)
        return web.json_response({"detail": "The client went away"}, status=400)
    except web.RequestPayloadError as e:
        # A body the parser could not decode (broken chunks, bad gzip): the caller's fault.
        return web.json_response({"detail": parse_error_detail(400, e.__cause__)}, status=400)
    except sqlite3.OperationalError as e:
        # Last line of defence behind the filter's own bounds: a list query SQLite refuses to run
        # ("expression tree is too large", "too many terms") is the caller's filter, not our fault.
        if not request.path.rstrip("/").endswith("/list"):
            log.exception("unhandled error", method=request.method, path=request.path)
            return web.json_response({"detail": "Internal server error"}, status=500)
        log.warning("the database refused a list query", path=request.path, error=str(e))
        return web.json_response({"detail": f"Bad filter specification: the database refused it ({e})"},
                                 status=400)
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return web.json_response({"detail": "Internal server error"}, status=500)


def seed_users(store: Store, settings: ServerSettings) -> None:
    """Create (or bring up to date) the users named in the settings.

    Without an admin setting, a first start creates `admin` with a generated
    password and prints it once; only its hash is stored.
    """
    for secret, staff in ((settings.admin, True), (settings.worker, False)):
        if secret is None:
            continue
        name, _, password = secret.get_secret_value().partition(":")
        row = store.user_by_name(name)
        if row is None or bool(row["is_staff"]) != staff \
                or not verify_password(password, row["password_hash"]):
            store.put_user(name, hash_password(password), staff)
    if settings.admin is None and not store.has_staff():
        password = generate_password()
        store.put_user("admin", hash_password(password), True)
        print(f"ufdl-node server: created staff user 'admin' with password {password} "
              "(shown only this once; only its hash is stored)", flush=True)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # The database holds password hashes and the directory the signing key: ours alone.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await asyncio.to_thread(Store, settings.data_dir)
    try:
        await asyncio.to_thread(seed_users, store, settings)
        app[RUNTIME].store = store
        app[RUNTIME].tokens = TokenIssuer(load_signing_key(settings.data_dir),
                                          settings.access_lifetime_s, settings.refresh_lifetime_s)
        yield
    finally:
        app[RUNTIME].store = app[RUNTIME].tokens = None
        store.close()


async def _close_sockets(app: web.Application) -> None:
    await app[HUB].close_all()


def create_app(settings: ServerSettings) -> web.Application:
    """The embedded UFDL job server as an aiohttp application (not yet started)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_JSON_BYTES)
    app[SETTINGS] = settings
    app[HUB] = Hub()
    app[RUNTIME] = Runtime()
    app.cleanup_ctx.append(_resources)
    app.on_startup.append(datasets.on_startup)  # after _resources: it needs the store
    app.on_shutdown.append(_close_sockets)
    for method, path, handler in ROUTES:
        # A trailing slash is tolerated: every route is registered with and without one.
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path + "/", handler)
    return app
