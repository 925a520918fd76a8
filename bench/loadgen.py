"""A small keep-alive HTTP/1.1 load generator: cheap enough per request that the machine measures the server.

Closed loop (fixed concurrency, as fast as answers come) or open loop (a fixed arrival rate, latency measured
from when each request was due, so a slow server cannot hide queueing: no coordinated omission).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def summary(self, label: str) -> str:
        return (
            f"{label:<28} {self.requests_per_s:9.0f} req/s   p50 {self.pct(50):7.2f} ms   "
            f"p95 {self.pct(95):7.2f} ms   p99 {self.pct(99):7.2f} ms   "
            f"mean {statistics.fmean(self.latencies_ms or [0]):6.2f} ms"
            f"   ok {len(self.latencies_ms)}   errors {sum(self.errors.values())} {dict(self.errors) or ''}"
        )


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        status_line = await self.reader.readline()
        if not status_line:
            self.writer = None
            raise ConnectionError("server closed the connection")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _send(conn: Connection, raw: bytes, since: float, result: Result) -> Connection:
    """Sends one request and records its latency from `since` (or its error, with 0 for a broken connection);
    returns the connection to use next."""
    try:
        status = await conn.request(raw)
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        result.errors[0] = result.errors.get(0, 0) + 1
        return Connection(conn.host, conn.port)
    if status == 200:
        result.latencies_ms.append((time.perf_counter() - since) * 1000)
    else:
        result.errors[status] = result.errors.get(status, 0) + 1
    return conn


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed_loop(
    host: str, port: int, make_request: Callable[[int], bytes], *, concurrency: int, duration_s: float
) -> Result:
    result = Result()
    counter = iter(range(10**9))
    start = time.perf_counter()
    stop_at = start + duration_s

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                raw = make_request(next(counter))
                conn = await _send(conn, raw, time.perf_counter(), result)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


async def open_loop(
    host: str, port: int, make_request: Callable[[int], bytes], *, rate: float, duration_s: float, connections: int
) -> Result:
    """Requests are due every 1/rate seconds; a pool of keep-alive connections sends them."""
    result = Result()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    start = time.perf_counter()

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                due, raw = item
                conn = await _send(conn, raw, due, result)
        finally:
            conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    total = int(rate * duration_s)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, make_request(i)))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.elapsed_s = time.perf_counter() - start
    return result
