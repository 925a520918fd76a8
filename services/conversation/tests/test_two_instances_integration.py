"""Two instances of conversation on one database end where one instance ends.

Two OS processes (two_instances_worker.py, each with its own client) apply one interleaved stream at once:
customers' messages with duplicates (in both processes, so the same message races itself), the first messages
of new chats (so the chat's creation races), delivery statuses shuffled and duplicated (some before the wamid is
known), outbound's acceptances, reads of the same chats from both, and notes. The end state is compared with
the same stream applied by one process to another database, and checked against what the input implies.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from waflow_common.events.envelope import utcnow
from waflow_common.events.inbound import MessageReceivedEvent, inbound_adapter
from waflow_common.events.outbound import TextMessage
from waflow_conversation import domain
from waflow_conversation.repository import ChatRepository, Collections
from waflow_conversation.repository_messages import MessageRepository

from .conftest import Stack, new_wa_id

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("two_instances_worker.py")
READ_CUSTOMERS = 8  # chats that exist before, whose agent's reply gets statuses and which both instances read
NEW_CUSTOMERS = 8  # chats that the stream creates
MESSAGES = 8  # per new chat
Ops = list[dict[str, Any]]


def _events(tenant_id: str, ops: Ops) -> Ops:
    return [dict(op, tenant_id=tenant_id) for op in ops]


def _stream(stack: Stack, seed: int) -> tuple[Ops, Ops, Ops, dict[str, Any]]:
    """(setup, instance 1's ops, instance 2's ops, what the input implies)."""
    rnd = random.Random(seed)
    tenant_id, number = stack.a.tenant_id, stack.a.phone_number_id
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    setup: Ops = []
    read_chats: list[tuple[str, str]] = []  # (chat_id, request_id)
    for n in range(READ_CUSTOMERS):
        wa_id = new_wa_id()
        first = [stack.text(wa_id, f"old {i}", at=base - timedelta(minutes=5, seconds=-i)) for i in range(3)]
        setup.append({"op": "inbound", "events": [e.to_json().decode() for e in first]})
        read_chats.append((domain.chat_id_for(tenant_id, number, wa_id), f"req_two_instances_{seed}_{n}"))
    one: Ops = []
    two: Ops = []
    expected: dict[str, Any] = {"new": {}, "read": [c for c, _ in read_chats], "notes": 0}
    singles: list[tuple[Any, bool]] = []  # (event, duplicated in both)
    for _ in range(NEW_CUSTOMERS):
        wa_id = new_wa_id()
        chat_id = domain.chat_id_for(tenant_id, number, wa_id)
        texts = [stack.text(wa_id, f"m{i}", at=base + timedelta(seconds=i)) for i in range(MESSAGES)]
        expected["new"][chat_id] = f"m{MESSAGES - 1}"
        singles += [(e, rnd.random() < 0.4) for e in texts]
    for n, (chat_id, request_id) in enumerate(read_chats):
        wamid = f"wamid.TWO{seed}x{n}x{uuid.uuid4().hex[:8]}"
        at = base + timedelta(minutes=1)
        statuses = [
            stack.status(wamid, "x", s, at + timedelta(seconds=i)) for i, s in enumerate(("sent", "delivered", "read"))
        ]
        singles += [(s, rnd.random() < 0.5) for s in statuses]
        accepted = stack.accepted(request_id, "x", wamid)
        (one if n % 2 else two).append({"op": "result", "event": accepted.to_json().decode()})
        one.append({"op": "read", "chat_id": chat_id})
        two.append({"op": "read", "chat_id": chat_id})
        for k in range(2):
            (one if k else two).append(
                {"op": "note", "chat_id": chat_id, "note_id": f"note_{seed}_{n}_{k}", "text": f"n{k}"}
            )
            expected["notes"] += 1
    rnd.shuffle(singles)
    for event, both in singles:
        targets = [one, two] if both else [rnd.choice([one, two])]
        for target in targets:
            target.append({"op": "inbound", "events": [event.to_json().decode()]})
    for ops in (one, two):
        rnd.shuffle(ops)
    expected["sends"] = [domain.outbound_message_id(tenant_id, r) for _, r in read_chats]
    return (
        _events(tenant_id, setup),
        _events(tenant_id, one),
        _events(tenant_id, two),
        expected | {"read_requests": read_chats},
    )


async def _prepare(stack: Stack, db: AsyncDatabase[dict[str, Any]], setup: Ops, expected: dict[str, Any]) -> None:
    """What exists before the stream, made by one instance: chats with messages, and an agent's reply in each."""
    collections = Collections(db)
    await collections.create_indexes()
    chats = ChatRepository(collections, utcnow, lambda _c, _k: None, lambda _t: [stack.a.phone_number_id])
    messages = MessageRepository(collections, chats, utcnow, lambda _c, _k: None)
    for op in setup:
        events = [inbound_adapter.validate_json(e) for e in op["events"]]
        received = [(e.payload, None) for e in events if isinstance(e, MessageReceivedEvent)]
        await messages.record_inbound(stack.a.tenant_id, received)
    for chat_id, request_id in expected["read_requests"]:
        chat = await chats.get(stack.a.tenant_id, chat_id)
        await messages.store_send(
            chat,
            request_id=request_id,
            message=TextMessage(body="on its way"),
            reply_to_wamid=None,
            requested_by="agent:test",
            correlation_id=None,
        )


async def _run(stack: Stack, tmp: Path, db: str, lanes: list[Ops]) -> None:
    start_at = time.time() + 3
    procs = []
    for n, ops in enumerate(lanes):
        path = tmp / f"{db}-{n}.json"
        path.write_text(json.dumps(ops))
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                str(path),
                stack.settings.mongodb_uri,
                db,
                stack.a.phone_number_id,
                str(start_at),
                "3" if len(lanes) > 1 else "1",
            )
        )
    for proc in procs:
        assert await asyncio.wait_for(proc.wait(), timeout=180) == 0


VOLATILE = {"version", "applied", "outbox", "read_at", "created_at", "received_at", "lifecycle_at", "at"}
VOLATILE |= {"status_version", "amend_version", "parked_at", "hidden_at"}
# A window opens with the first message that arrives (in partition order): the streams here shuffle one chat's
# messages across instances and lanes, so which one came first is not part of the end state.
VOLATILE |= {"window_opened_at"}


def _stable(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in VOLATILE}
    if "report_keys" in out:
        out["report_keys"] = sorted(out["report_keys"])
    return out


async def _state(db: AsyncDatabase[dict[str, Any]]) -> dict[str, Any]:
    chats = {c["_id"]: c async for c in db["chats"].find({})}
    events = {k: Counter(json.loads(e["value"])["event_type"] for e in c.get("outbox", [])) for k, c in chats.items()}
    return {
        "chats": {k: _stable(c) for k, c in chats.items()},
        "events": events,
        "messages": {m["_id"]: _stable(m) async for m in db["messages"].find({})},
        "notes": sorted([(n["_id"], n["chat_id"], n["text"]) async for n in db["notes"].find({})]),
        "orphans": [o["_id"] async for o in db["orphan_statuses"].find({})],
    }


async def test_two_instances_end_where_one_instance_ends(stack: Stack, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    setup, one, two, expected = _stream(stack, seed)
    prefix = stack.settings.database("two_instances_")
    pair, single = f"{prefix}{seed}_pair", f"{prefix}{seed}_single"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.settings.mongodb_uri, tz_aware=True)
    try:
        for name in (pair, single):
            await _prepare(stack, mongo[name], setup, expected)
        await _run(stack, tmp_path, pair, [one, two])
        merged = [op for pair_ops in zip(one, two, strict=False) for op in pair_ops]
        merged += one[len(two) :] + two[len(one) :]
        await _run(stack, tmp_path, single, [merged])
        by_two, by_one = await _state(mongo[pair]), await _state(mongo[single])
    finally:
        for name in (pair, single):
            await mongo.drop_database(name)
        await mongo.close()

    for part in ("chats", "messages"):
        assert sorted(by_two[part]) == sorted(by_one[part]), (seed, part)
        for doc_id, doc in by_two[part].items():
            differ = {k: (v, by_one[part][doc_id].get(k)) for k, v in doc.items() if by_one[part][doc_id].get(k) != v}
            assert not differ, (seed, doc_id, differ)
    assert by_two == by_one, f"seed {seed}"
    tenant_id = stack.a.tenant_id
    for state in (by_two, by_one):
        for chat_id, last in expected["new"].items():
            chat_key = f"{tenant_id}:{chat_id}"
            chat = state["chats"][chat_key]
            assert (chat["unread_count"], chat["last_message"]["preview"]) == (MESSAGES, last), seed
            assert state["events"][chat_key]["window.opened"] == 1, seed
            stored = [m for m in state["messages"].values() if m["chat_id"] == chat_id]
            assert len(stored) == MESSAGES, seed
            assert all(m["counted"] for m in stored), seed
        for chat_id in expected["read"]:
            chat_key = f"{tenant_id}:{chat_id}"
            assert state["chats"][chat_key]["unread_count"] == 0, seed
            assert state["events"][chat_key]["chat.read"] == 1, seed
        for message_id in expected["sends"]:
            assert state["messages"][f"{tenant_id}:{message_id}"]["status"] == "read", seed
        assert len(state["notes"]) == expected["notes"]
        assert state["orphans"] == []


async def test_two_sweepers_announce_each_window_event_once(stack: Stack) -> None:
    tenant_id, number = stack.a.tenant_id, stack.a.phone_number_id
    db_name = stack.settings.database(f"two_sweepers_{uuid.uuid4().hex[:8]}")
    clients = [AsyncMongoClient[dict[str, Any]](stack.settings.mongodb_uri, tz_aware=True) for _ in range(2)]
    try:
        repos = []
        for client in clients:
            collections = Collections(client[db_name])
            await collections.create_indexes()
            repos.append(ChatRepository(collections, stack.clock, lambda _c, _k: None, lambda _t: [number]))
        messages = MessageRepository(Collections(clients[0][db_name]), repos[0], stack.clock, lambda _c, _k: None)
        at = stack.clock.now - timedelta(hours=23, minutes=30)
        wa_ids = [new_wa_id() for _ in range(20)]
        await messages.record_inbound(tenant_id, [(stack.text(w, "hi", at=at).payload, None) for w in wa_ids])
        lead = timedelta(hours=1)
        closing = await asyncio.gather(*(r.sweep_windows(tenant_id, stack.clock.now, lead) for r in repos * 2))
        later = stack.clock.now + timedelta(hours=1)
        closed = await asyncio.gather(*(r.sweep_windows(tenant_id, later, lead) for r in repos * 2))
        assert (sum(closing), sum(closed)) == (len(wa_ids), len(wa_ids))
        async for chat in clients[1][db_name]["chats"].find({}):
            kinds = Counter(json.loads(e["value"])["event_type"] for e in chat["outbox"])
            ids = [e["event_id"] for e in chat["outbox"]]
            assert (kinds["window.closing"], kinds["window.closed"], len(set(ids))) == (1, 1, len(ids))
            assert chat["window_state"] == "closed"
    finally:
        await clients[0].drop_database(db_name)
        for client in clients:
            await client.close()
