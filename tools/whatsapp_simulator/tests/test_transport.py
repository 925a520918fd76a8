"""The keep-alive webhook transport against a scripted HTTP/1.1 server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from waflow_simulator.transport import KeepAliveTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    return head + await reader.readexactly(length)


class Server:
    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def serve(self, handler: Handler) -> asyncio.Server:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=KeepAliveTransport(), timeout=1.0) as http:
        yield http


def _answering(*responses: bytes, server: Server) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            server.requests.append(await _read_request(reader))
            writer.write(response)
            await writer.drain()
        await reader.read()

    return handler


async def test_posts_bytes_and_reuses_the_connection(client: httpx.AsyncClient) -> None:
    server = Server()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with await server.serve(_answering(ok, ok, server=server)):
        url = f"http://127.0.0.1:{server.port}/hook?x=1"
        first = await client.post(url, content=b'{"a":1}', headers={"X-Hub-Signature-256": "sha256=ab"})
        second = await client.post(url, content=b"{}")

    assert (first.status_code, first.content, second.content) == (200, b"ok", b"ok")
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert b"\r\nx-hub-signature-256: sha256=ab\r\n" in server.requests[0].lower()
    assert server.requests[0].endswith(b'\r\n\r\n{"a":1}')


async def test_reads_chunked_bodies_and_skips_100_continue(client: httpx.AsyncClient) -> None:
    server = Server()
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbusy\r\n3;ext=1\r\n...\r\n0\r\n\r\n"
    )
    async with await server.serve(_answering(chunked, b"HTTP/1.1 204 No Content\r\n\r\n", server=server)):
        url = f"http://127.0.0.1:{server.port}/"
        busy = await client.post(url, content=b"x")
        empty = await client.post(url, content=b"y")

    assert (busy.status_code, busy.content) == (503, b"busy...")
    assert (empty.status_code, empty.content) == (204, b"")
    assert server.connections == 1


async def test_close_delimited_answer_is_not_reused(client: httpx.AsyncClient) -> None:
    server = Server()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(await _read_request(reader))
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nbye")
        await writer.drain()

    async with await server.serve(handler):
        url = f"http://127.0.0.1:{server.port}/"
        assert (await client.post(url, content=b"1")).content == b"bye"
        assert (await client.post(url, content=b"2")).content == b"bye"

    assert server.connections == 2


async def test_a_connection_the_server_closed_is_replaced_transparently(client: httpx.AsyncClient) -> None:
    server = Server()

    async def one_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with await server.serve(one_then_hang_up):
        url = f"http://127.0.0.1:{server.port}/"
        await client.post(url, content=b"1")
        await asyncio.sleep(0.05)
        response = await client.post(url, content=b"2")

    assert response.status_code == 200
    assert len(server.requests) == 2
    assert server.connections == 2


async def test_errors_map_to_httpx_exceptions(client: httpx.AsyncClient) -> None:
    server = Server()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with await server.serve(silent):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"http://127.0.0.1:{server.port}/", content=b"x", timeout=0.1)

    closed = Server()
    async with await closed.serve(silent):
        port = closed.port
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/", content=b"x")
