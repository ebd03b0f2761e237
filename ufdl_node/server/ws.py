"""The job web socket ``ws://<server>/v1/jobs/{pk}`` (UFDL-API.md section 3, "Web socket").

Every lifecycle change publishes one JSON message to the sockets open on the
job. On connect the current phase is replayed to every socket on the job, as
the real server's channel group does. No authentication, as on the real
server; with ``real_server_quirks`` the handshake is refused unless the job
asked for notifications when it was created. At most ``max_websockets`` are open
at once (a 503 beyond), since they need no token.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from aiohttp import WSCloseCode, web

from ..logs import get_logger
from . import lifecycle
from .common import SETTINGS, ApiError, pk_of, store_of
from .store import Store

log = get_logger("ufdl_node.server.ws")


class Hub:
    """The open sockets, by job pk."""

    def __init__(self) -> None:
        self.sockets: dict[int, set[web.WebSocketResponse]] = defaultdict(set)
        self.refused = 0  # handshakes refused above max_websockets

    async def publish(self, pk: int, message: dict[str, Any]) -> None:
        for ws in list(self.sockets.get(pk, ())):
            if ws.closed:
                self.sockets[pk].discard(ws)
                continue
            try:
                await ws.send_json(message)
            except (ConnectionError, RuntimeError):
                # A client that went away mid-send; the next publish forgets it.
                self.sockets[pk].discard(ws)

    async def close_all(self) -> None:
        for sockets in list(self.sockets.values()):
            for ws in list(sockets):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        self.sockets.clear()


HUB = web.AppKey("hub", Hub)


def message(transition: str, row: sqlite3.Row, data: Any = None) -> dict[str, Any]:
    """One transition message: the job's state after the change, plus the progress body."""
    state = Store.job_state(row)
    body: dict[str, Any] = {
        "transition": transition, "pk": row["pk"], "description": row["description"],
        "progress": float(row["progress"]), "cancelled": bool(row["is_cancelled"]),
        "transition_data": data if isinstance(data, dict) else {}}
    if row["node"] is not None:
        body["node"] = row["node"]
    if lifecycle.phase(state) is lifecycle.Phase.ERRORED:
        body["error"] = row["error_reason"]
    return body


def wants_socket(override: Any) -> bool:
    """Whether a notification_override asks for web-socket notifications (quirks mode only)."""
    if not isinstance(override, dict):
        return False
    actions = override.get("actions")
    return isinstance(actions, dict) and any(isinstance(v, list) and v for v in actions.values())


async def job_socket(request: web.Request) -> web.StreamResponse:
    """The web-socket side of GET /v1/jobs/{pk}."""
    app = request.app
    store = store_of(app)
    pk = pk_of(request)
    if store.job(pk) is None:
        raise ApiError(403, "No such job")
    if app[SETTINGS].real_server_quirks and not wants_socket(store.notification_override(pk)):
        raise ApiError(403, "The job was not created with web-socket notifications")
    hub = app[HUB]
    limit = app[SETTINGS].max_websockets
    if sum(len(sockets) for sockets in hub.sockets.values()) >= limit:
        # no token is needed to open one: a flood of them must not hold every connection
        if hub.refused % 1000 == 0:  # one line per thousand: a flood must not flood the log too
            log.warning("web sockets refused: too many open", max_websockets=limit,
                        refused_so_far=hub.refused + 1)
        hub.refused += 1
        raise ApiError(503, "Too many web sockets are open; try again later")
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    hub.sockets[pk].add(ws)
    try:
        row = store.job(pk)
        replay = None if row is None else lifecycle.replay_transition(Store.job_state(row))
        if row is not None and replay is not None:
            await hub.publish(pk, message(replay, row))
        async for _ in ws:
            pass  # clients have nothing to say; reading keeps the close handshake working
    finally:
        hub.sockets[pk].discard(ws)
        if not hub.sockets[pk]:
            hub.sockets.pop(pk, None)
    return ws
