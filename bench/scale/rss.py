"""Conversation's memory with many chats: chats seeded straight into its database, then a fresh process, some
traffic and list queries, and its VmRSS / VmHWM from /proc.

The chats are written as the service writes them, by its own repository code (no copy of the document format):
`ChatRepository._new_chat` makes a new chat, `_fold_inbound` counts the customer's first message on it (the
state `apply_inbound` inserts), `MessageRepository._inbound_doc` is that message; they go in with bulk inserts,
with the outbox empty (as after the relay published the window.opened events) and the message counted. Customer
links are not seeded: the service finds a seeded customer by their chat, as for chats made before links were
kept, and links them at their next message.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from waflow_common.events.envelope import utcnow
from waflow_common.events.inbound import MessageReceived, TextContent
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings
from waflow_conversation import domain
from waflow_conversation.main import DATABASE
from waflow_conversation.repository import ChatRepository, Collections, key
from waflow_conversation.repository_messages import MessageRepository

from bench.infra import BenchTenant
from bench.pipeline import Load, pct, send_load

BATCH = 1000


def seeded_customer(n: int) -> str:
    return f"1777{n:07d}"


async def seed_chats(settings: CommonSettings, tenant: BenchTenant, start: int, stop: int) -> float:
    """Chats number `start` to `stop` - 1 of `tenant`, one message each (the last activity of chat n is n ms
    after that of chat n - 1, up to now); returns the seconds it took."""
    began = time.perf_counter()
    mongo = make_mongo_client(settings)
    try:
        collections = Collections(service_database(mongo, settings, DATABASE))
        await collections.create_indexes()
        now = utcnow()
        day_before = now - timedelta(days=1)  # each chat was created then; its message moves its activity to now

        def clock() -> datetime:
            return day_before

        chats = ChatRepository(collections, clock, lambda _c, _k: None, lambda _t: [tenant.phone_number_id])
        messages = MessageRepository(collections, chats, utcnow, lambda _c, _k: None)
        number = tenant.phone_number_id
        template = await chats._new_chat(tenant.tenant_id, "", number, seeded_customer(start), None)
        for first in range(start, stop, BATCH):
            chat_docs: list[dict[str, Any]] = []
            message_docs: list[dict[str, Any]] = []
            for n in range(first, min(stop, first + BATCH)):
                wa_id = seeded_customer(n)
                m = MessageReceived(
                    wamid=f"wamid.SEED{tenant.tenant_id}{n:09d}",
                    phone_number_id=number,
                    waba_id=tenant.waba_id,
                    wa_id=wa_id,
                    profile_name=f"Customer {n}",
                    type="text",
                    timestamp=now - timedelta(milliseconds=stop - n),
                    content=TextContent(body=f"seeded message {n}, of about the length of a real one"),
                )
                chat_id = domain.chat_id_for(tenant.tenant_id, number, wa_id)
                message_id = domain.inbound_message_id(tenant.tenant_id, m.wamid)
                new = template | {"_id": key(tenant.tenant_id, chat_id), "chat_id": chat_id, "wa_id": wa_id}
                folded = chats._fold_inbound(new, [(message_id, m, None)])
                assert folded is not None
                chat_docs.append(folded[1] | {"outbox": []})
                inbound = messages._inbound_doc(tenant.tenant_id, chat_id, message_id, m)
                message_docs.append(inbound | {"counted": True})
            await collections.messages.insert_many(message_docs, ordered=False)
            await collections.chats.insert_many(chat_docs, ordered=False)
    finally:
        await mongo.close()
    return time.perf_counter() - began


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@dataclass(frozen=True)
class Queries:
    list_ms: list[float]
    unread_ms: list[float]
    timeline_ms: list[float]
    search_ms: float | None


async def list_queries(
    http: httpx.AsyncClient, base: str, tenant: BenchTenant, chats: int, *, pages: int, timelines: int, search: bool
) -> Queries:
    """`pages` pages of 50 of the chat list, as many of the unread filter, `timelines` timelines of random
        seeded chats, and with `search` one search (a name that matches one chat: the server walks the tenant's chats,
    so it takes seconds at 10k chats)."""
    headers = {"Authorization": f"Bearer {tenant.api_key}"}

    async def walk(params: dict[str, Any]) -> list[float]:
        took: list[float] = []
        cursor: str | None = None
        for _ in range(pages):
            began = time.perf_counter()
            query = params | {"limit": 50} | ({"cursor": cursor} if cursor else {})
            page = (await http.get(f"{base}/v1/chats", headers=headers, params=query)).json()
            took.append((time.perf_counter() - began) * 1000)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return took

    listed = await walk({})
    unread = await walk({"unread": "true"})
    timeline: list[float] = []
    for n in random.sample(range(chats), min(timelines, chats)):
        chat_id = domain.chat_id_for(tenant.tenant_id, tenant.phone_number_id, seeded_customer(n))
        began = time.perf_counter()
        await http.get(f"{base}/v1/chats/{chat_id}/messages", headers=headers, params={"limit": 50})
        timeline.append((time.perf_counter() - began) * 1000)
    if not search:
        return Queries(listed, unread, timeline, None)
    began = time.perf_counter()
    await http.get(f"{base}/v1/chats", headers=headers, params={"search": f"Customer {chats // 2}", "limit": 50})
    return Queries(listed, unread, timeline, (time.perf_counter() - began) * 1000)


async def traffic(
    http: httpx.AsyncClient,
    sim_port: int,
    base: str,
    tenant: BenchTenant,
    chats: int,
    *,
    messages: int,
    rate: float,
    pages: int,
    timelines: int,
    search: bool,
) -> Queries:
    """Customers of seeded chats write (`messages` at `rate`) while the list queries run."""
    customers = [seeded_customer(n) for n in random.sample(range(chats), min(chats, 500))]
    sending = send_load(sim_port, tenant, Load(), customers, total=messages, rate=rate, connections=16)
    queries, _ = await asyncio.gather(
        list_queries(http, base, tenant, chats, pages=pages, timelines=timelines, search=search), sending
    )
    await asyncio.sleep(2)  # the last messages applied
    return queries


def describe(queries: Queries) -> str:
    parts = [
        f"list page p50 {pct(queries.list_ms, 50):.0f} / p99 {pct(queries.list_ms, 99):.0f} ms",
        f"unread page p50 {pct(queries.unread_ms, 50):.0f} / p99 {pct(queries.unread_ms, 99):.0f} ms",
        f"timeline p50 {pct(queries.timeline_ms, 50):.0f} / p99 {pct(queries.timeline_ms, 99):.0f} ms",
    ]
    if queries.search_ms is not None:
        parts.append(f"search {queries.search_ms:.0f} ms")
    return "   ".join(parts)


async def drop(settings: CommonSettings) -> None:
    """Conversation's database of this run (the seeded chats are large; a server given to the benchmark keeps
    what it is not told to drop)."""
    mongo = make_mongo_client(settings)
    try:
        await mongo.drop_database(settings.database(DATABASE))
    finally:
        await mongo.close()
