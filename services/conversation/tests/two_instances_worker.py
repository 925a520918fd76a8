"""One conversation instance for test_two_instances_integration: a process of its own, with its own client.

    python two_instances_worker.py OPS_FILE MONGODB_URI DATABASE PHONE_NUMBER_ID START_AT LANES

Applies the operations in OPS_FILE (JSON, see the test) through the service's own handlers and repositories,
starting at START_AT (epoch seconds, so that two instances start together), in LANES concurrent lanes. Events
stay parked in the documents' outboxes (no relay runs), where the test counts them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from pymongo import AsyncMongoClient
from waflow_common.events.envelope import utcnow
from waflow_common.events.inbound import inbound_adapter
from waflow_common.events.outbound import outbound_result_adapter
from waflow_conversation.handlers import ConversationHandlers
from waflow_conversation.repository import ChatRepository, Collections
from waflow_conversation.repository_messages import MessageRepository
from waflow_conversation.repository_notes import NoteRepository


async def apply(ops: list[dict[str, Any]], uri: str, database: str, number: str, start_at: float, lanes: int) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        collections = Collections(mongo[database])
        chats = ChatRepository(collections, utcnow, lambda _c, _k: None, lambda _t: [number])
        messages = MessageRepository(collections, chats, utcnow, lambda _c, _k: None)
        notes = NoteRepository(collections, utcnow, lambda _c, _k: None)
        handlers = ConversationHandlers(chats, messages)
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def run(op: dict[str, Any]) -> None:
            match op["op"]:
                case "inbound":
                    await handlers.on_inbound_many([inbound_adapter.validate_json(e) for e in op["events"]])
                case "result":
                    await handlers.on_result(outbound_result_adapter.validate_json(op["event"]))
                case "read":
                    await chats.mark_read(op["tenant_id"], op["chat_id"], "agent:test")
                case "note":
                    chat = await chats.get(op["tenant_id"], op["chat_id"])
                    await notes.add(chat, op["note_id"], "agent:test", op["text"], None)

        async def lane(mine: list[dict[str, Any]]) -> None:
            for op in mine:
                await run(op)

        await asyncio.gather(*(lane(ops[n::lanes]) for n in range(lanes)))
    finally:
        await mongo.close()


def main() -> None:
    ops_file, uri, database, number, start_at, lanes = sys.argv[1:7]
    with open(ops_file) as f:
        ops = json.load(f)
    asyncio.run(apply(ops, uri, database, number, float(start_at), int(lanes)))


if __name__ == "__main__":
    main()
