"""A lean keep-alive HTTP/1.1 transport for the webhook client: a fraction of httpcore's CPU per request."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import httpx

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_NO_BODY_STATUSES = frozenset({204, 304})
# Concurrency is bounded by the dispatcher; this only stops a burst from pinning sockets forever.
_MAX_IDLE_PER_ORIGIN = 256


class _Stale(Exception):
    """A kept-alive connection the server had already closed; the request never reached it."""


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP requests over pooled asyncio streams; https goes to httpx's own transport.

    Profiling at ~1,000 webhooks/s showed httpcore's pool and anyio layers costing 0.5-2 ms of CPU per
    POST (growing with concurrency); this keeps it near 0.15 ms, which is what makes load tests possible.
    """

    def __init__(self) -> None:
        self._idle: defaultdict[tuple[str, int], list[_Connection]] = defaultdict(list)
        self._tls = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            return await self._tls.handle_async_request(request)
        origin = (request.url.host, request.url.port or 80)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        payload = _serialise(request, await request.aread())
        idle = self._idle[origin]
        while idle:
            connection = idle.pop()
            try:
                return await self._exchange(origin, connection, request, payload, timeouts, reused=True)
            except _Stale:
                continue
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                connection = await asyncio.open_connection(*origin)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {origin} timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return await self._exchange(origin, connection, request, payload, timeouts, reused=False)

    async def _exchange(
        self,
        origin: tuple[str, int],
        connection: _Connection,
        request: httpx.Request,
        payload: bytes,
        timeouts: dict[str, float | None],
        *,
        reused: bool,
    ) -> httpx.Response:
        reader, writer = connection
        received_any = False
        try:
            async with asyncio.timeout(timeouts.get("read")):
                writer.write(payload)
                await writer.drain()
                status, reason, headers, keep_alive = await _read_head(reader)
                received_any = True
                body, complete = await _read_body(reader, request.method, status, headers)
        except asyncio.CancelledError:
            writer.close()
            raise
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            writer.close()
            if reused and not received_any and not isinstance(exc, TimeoutError):
                raise _Stale from exc
            if isinstance(exc, TimeoutError):
                raise httpx.ReadTimeout("webhook receiver did not answer in time", request=request) from exc
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        if keep_alive and complete and len(self._idle[origin]) < _MAX_IDLE_PER_ORIGIN:
            self._idle[origin].append(connection)
        else:
            writer.close()
        return httpx.Response(
            status,
            headers=headers,
            content=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()
        await self._tls.aclose()


def _serialise(request: httpx.Request, body: bytes) -> bytes:
    head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        head += (name, b": ", value, b"\r\n")
    if body and "content-length" not in request.headers and "transfer-encoding" not in request.headers:
        head += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    while True:
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        status = int(code)
        # Interim answers (100 Continue) precede the real one on the same connection.
        if not 100 <= status < 200:
            break
    headers = []
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        value = value.strip()
        headers.append((name, value))
        if name.lower() == b"connection":
            keep_alive = value.lower() != b"close"
    return status, reason, headers, keep_alive


async def _read_body(
    reader: asyncio.StreamReader, method: str, status: int, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, bool]:
    """(body, whether the connection is still framed correctly and may be reused)."""
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return b"", True
    fields: dict[bytes, Any] = {name.lower(): value for name, value in headers}
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(chunks), True
            chunks.append((await reader.readexactly(size + 2))[:-2])
    if (length := fields.get(b"content-length")) is not None:
        return await reader.readexactly(int(length)), True
    return await reader.read(), False
