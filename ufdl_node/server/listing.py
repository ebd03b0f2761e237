"""Streaming a list reply: the rows come from a worker thread, chunk by chunk.

A list can hold the whole backlog (the UFDL filter has no limit, the real
server no pagination): 100,000 waiting jobs are some 30 MB of JSON. Building
that on the event loop would stall every other request for as long, so the
query steps in a thread (``Store.list_chunks``) and each chunk is written as
soon as it is ready; the client's reading paces the query, and memory stays at
a few chunks whatever the length.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator

from aiohttp import web

from ..logs import get_logger
from .filters import Query, Resource
from .store import Store

log = get_logger("ufdl_node.server.listing")

# The reply is one JSON array, as web.json_response would send it.
CONTENT_TYPE = "application/json"


async def stream_list(request: web.Request, store: Store, resource: Resource, row_json: str,
                      query: Query) -> web.StreamResponse:
    """Answer `request` with the rows of `query` as one JSON array, built off the event loop.

    An error before the first chunk (a query SQLite refuses) propagates as usual, to
    be answered as a JSON error; one after it is logged and cuts the connection.
    """
    chunks = store.list_chunks(resource, row_json, query)
    step: concurrent.futures.Future[bytes | None] | None = None
    try:
        step = _next_in_thread(chunks)
        chunk = await asyncio.wrap_future(step)
        response = web.StreamResponse(headers={"Content-Type": f"{CONTENT_TYPE}; charset=utf-8"})
        await response.prepare(request)
        try:
            while chunk is not None:
                # Ask for the next chunk before writing this one: the query and the socket overlap.
                step = _next_in_thread(chunks)
                await response.write(chunk)
                chunk = await asyncio.wrap_future(step)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            # The status line is sent: no error reply can follow. Cut the connection, so that
            # the client sees a broken body rather than a short list that parses.
            log.exception("list cut short", path=request.path)
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("the list failed after its first chunk") from None
        step = None
        await response.write_eof()
        return response
    finally:
        _close_after(step, chunks)


def _next_in_thread(chunks: Iterator[bytes]) -> concurrent.futures.Future[bytes | None]:
    loop = asyncio.get_running_loop()
    future: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(next(chunks, None))
        except BaseException as e:  # handed to the awaiting coroutine
            future.set_exception(e)

    loop.run_in_executor(None, run)
    return future


def _close_after(step: concurrent.futures.Future[bytes | None] | None, chunks: Iterator[bytes]) -> None:
    """Release the statement and its connection, once no thread is stepping the generator."""
    close = getattr(chunks, "close", None)
    if close is None:
        return
    if step is None or step.done():
        close()
    else:
        # A step still runs in its thread (the client went away, the handler was cancelled):
        # closing now would fail with "generator already executing", so the step closes it.
        step.add_done_callback(lambda _: close())
