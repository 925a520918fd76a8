"""Benchmark the MongoDB-protocol server on the operations conversation's hot paths make.

    uv run python -m bench.mongo_server [--documents 40000] [--rounds 100]

Starts the local database server of its own (deploy/local/infra.sh) unless MONGODB_URI is set, and prints:
- a chat update: what one `UpdateOne` costs inside a bulk of 20, in wall time and, for its own server, in the
  server's CPU (from /proc), for 200 chat documents shaped like conversation's;
- a timeline page: a find of 50 `_id`s with `$in` among --documents message documents;
- storing messages: `insert_many` of 200 messages.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne

from bench.documents import chat_document
from bench.figures import figure
from bench.infra import INFRA, REPO, free_port


@contextmanager
def mongo_server() -> Iterator[tuple[str, Path | None]]:
    """(URI, pid file of our own server or None)."""
    if "MONGODB_URI" in os.environ:
        yield os.environ["MONGODB_URI"], None
        return
    data = REPO / ".data" / "bench-mongo-server"
    env = dict(os.environ) | {"WAFLOW_DATA": str(data), "MONGO_PORT": str(free_port())}
    subprocess.run(["bash", str(INFRA), "wipe"], env=env, check=True)
    subprocess.run(["bash", str(INFRA), "start", "mongo"], env=env, check=True)
    try:
        yield f"mongodb://127.0.0.1:{env['MONGO_PORT']}", data / "mongo.pid"
    finally:
        subprocess.run(["bash", str(INFRA), "wipe"], env=env, check=False)


def server_cpu(pid_file: Path | None) -> float | None:
    if pid_file is None:
        return None
    fields = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def message(n: int, now: datetime) -> dict[str, Any]:
    return {
        "_id": f"tenant_bench:msg_{n:024x}",
        "message_id": f"msg_{n:024x}",
        "tenant_id": "tenant_bench",
        "chat_id": f"ch_{n % 200:024x}",
        "wamid": f"wamid.BENCH{n:032x}",
        "direction": "in",
        "type": "text",
        "content": {"type": "text", "body": f"message {n}"},
        "at": now,
        "hidden": False,
    }


async def measure(args: argparse.Namespace, uri: str, pid_file: Path | None) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    db = client[f"bench_{uuid.uuid4().hex[:6]}"]
    now = datetime.now(UTC)
    try:
        chats = db["chats"]
        docs = [chat_document(n, now) for n in range(200)]
        await chats.insert_many(docs)
        wall, cpu, updates = 0.0, 0.0, 0
        for r in range(args.rounds):
            bulk = [
                UpdateOne(
                    {"_id": d["_id"]},
                    {"$set": {"last_message_at": now, "profile_name": f"C{r}"}} | {"$inc": {"unread_count": 1}},
                )
                for d in docs[(r * 20) % 200 : (r * 20) % 200 + 20]
            ]
            cpu_before, began = server_cpu(pid_file), time.perf_counter()
            await chats.bulk_write(bulk, ordered=False)
            wall += time.perf_counter() - began
            cpu_after = server_cpu(pid_file)
            if cpu_before is not None and cpu_after is not None:
                cpu += cpu_after - cpu_before
            updates += len(bulk)
        server = f"   server CPU {cpu / updates * 1000:.3f} ms" if pid_file else ""
        print(f"chat update (bulks of 20, {updates} in all): wall {wall / updates * 1000:.3f} ms{server}")
        figure("a chat update in a bulk of 20", wall / updates * 1000, unit="ms")

        messages = db["messages"]
        stored: list[float] = []
        for start in range(0, args.documents, 200):
            batch = [message(n, now) for n in range(start, min(start + 200, args.documents))]
            began = time.perf_counter()
            await messages.insert_many(batch, ordered=False)
            stored.append((time.perf_counter() - began) * 1000)
        print(f"insert_many of 200 messages: median {sorted(stored)[len(stored) // 2]:.1f} ms")
        figure("insert_many of 200 messages, median", sorted(stored)[len(stored) // 2], unit="ms")
        pages: list[float] = []
        for r in range(20):
            ids = [f"tenant_bench:msg_{(r * 997 + k * 811) % args.documents:024x}" for k in range(50)]
            began = time.perf_counter()
            found = await messages.find({"_id": {"$in": ids}}).to_list()
            pages.append((time.perf_counter() - began) * 1000)
            assert len(found) == len(set(ids))
        print(f"find of 50 _ids ($in) among {args.documents} messages: median {sorted(pages)[10]:.1f} ms")
        figure(f"a timeline page (50 _ids) among {args.documents} messages", sorted(pages)[10], unit="ms")
    finally:
        await client.drop_database(db.name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=40_000, help="message documents for the find")
    parser.add_argument("--rounds", type=int, default=100, help="bulks of 20 chat updates")
    args = parser.parse_args()
    with mongo_server() as (uri, pid_file):
        asyncio.run(measure(args, uri, pid_file))


if __name__ == "__main__":
    main()
