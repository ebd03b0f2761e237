"""A file as an upload's request body: sent by ``sendfile``, or read ahead while it is sent.

:class:`UploadFile` is what :meth:`ufdl_node.transport.Transport.request` takes as the body of
an output's upload (``body=``); the payload class registered here is how aiohttp sends it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

# Bytes read from an uploaded file at a time where sendfile cannot serve; two such chunks
# are in memory at most.
UPLOAD_CHUNK_BYTES = 1 << 20
# Off only in tests, to exercise the read-ahead path on a plain socket.
UPLOAD_SENDFILE = True


class UploadFile:
    """A file to upload as a request body, with a Content-Length (its size when opened).

    aiohttp's own file body reads a chunk in the thread pool, then sends it, then
    reads the next: disk and socket take turns, and every byte is copied twice.
    This one goes out with the event loop's ``sendfile`` (the kernel copies file
    to socket) where the transport allows it; elsewhere (TLS) the next 1 MiB chunk
    is read while the current one is sent, with no more than two in memory.
    Closing it is safe at any time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.file = open(path, "rb")  # closed by close(), once sent or abandoned
        self.size = os.fstat(self.file.fileno()).st_size
        self.reading: asyncio.Future[bytes] | None = None

    def close(self) -> None:
        reading = self.reading
        if reading is not None and not reading.done():
            # A read still runs in its thread: close the file once it returns.
            reading.add_done_callback(lambda _: self.file.close())
        else:
            self.file.close()


class _UploadPayload(aiohttp.payload.Payload):
    """Sends an UploadFile: by sendfile, or reading chunk n+1 while chunk n is written."""

    _value: UploadFile

    def __init__(self, value: UploadFile, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._size = value.size

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("an uploaded file is sent as bytes, not decoded")

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        upload = self._value
        left = upload.size if content_length is None else min(upload.size, content_length)
        loop = asyncio.get_running_loop()

        def read_ahead() -> asyncio.Future[bytes] | None:
            if left <= 0:
                return None
            upload.reading = loop.run_in_executor(None, upload.file.read, min(UPLOAD_CHUNK_BYTES, left))
            return upload.reading

        if left > 0 and UPLOAD_SENDFILE and await self._sendfile(writer, left):
            return
        reading = read_ahead()
        while reading is not None:
            chunk = await reading
            if not chunk:
                raise OSError(f"{upload.file.name}: the file shrank while it was being uploaded")
            left -= len(chunk)
            reading = read_ahead()
            await writer.write(chunk)

    async def _sendfile(self, writer: Any, count: int) -> bool:
        """Send `count` bytes with the event loop's sendfile; False where the transport cannot (TLS)."""
        transport = getattr(writer, "transport", None)
        if transport is None or not hasattr(writer, "send_headers"):
            return False
        if getattr(writer, "chunked", False) or getattr(writer, "_compress", None) is not None:
            return False  # the body must pass through the writer's framing
        writer.send_headers()
        loop = asyncio.get_running_loop()
        try:
            sent = await loop.sendfile(transport, self._value.file, 0, count, fallback=False)
        except (NotImplementedError, asyncio.SendfileNotAvailableError):
            return False
        if sent != count:
            raise OSError(f"{self._value.file.name}: the file shrank while it was being uploaded")
        return True

    def _close(self) -> None:
        self._value.close()


aiohttp.payload.PAYLOAD_REGISTRY.register(_UploadPayload, UploadFile, order=aiohttp.payload.Order.try_first)
