"""What conversation's repositories share: document keys, the collections and their locks, pages and cursors.

See repository.py for why every document is read and written by `_id` alone, each write under its lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from waflow_common.events.contacts import ContactSnapshot
from waflow_common.locks import KeyedLocks

from waflow_conversation import domain

Document = dict[str, Any]
Parked = Callable[[str, str], None]

# A chat remembers the last inbound messages it counted, so a record redelivered after a crash between counting
# and storing a message is not counted twice (see MessageRepository.record_inbound); older duplicates are
# recognised by the stored message. One write counts at most this many messages and they are stored before the
# chat's next write, so all of them are in that list; a long list is not cheap (FerretDB reads and rewrites the
# whole chat document on every change).
APPLIED_KEEP = 8


def key(tenant_id: str, public_id: str) -> str:
    """The `_id` of a tenant's document: the only filter FerretDB answers from an index."""
    return f"{tenant_id}:{public_id}"


class ChatNotFound(Exception):
    pass


class MessageNotFound(Exception):
    pass


@dataclass(frozen=True)
class Cause:
    """The event a change follows from, so the events it announces carry its correlation and causation."""

    correlation_id: str
    event_id: uuid.UUID


@dataclass(frozen=True)
class Page:
    items: list[Document]
    next_cursor: str | None


class Collections:
    """The service's collections and their indexes (created at start; idempotent)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        # Shared by every writer of these collections and the outbox relay (see waflow_common.outbox).
        self.locks = KeyedLocks()
        self.chats: AsyncCollection[Document] = db["chats"]
        self.messages: AsyncCollection[Document] = db["messages"]
        self.notes: AsyncCollection[Document] = db["notes"]
        self.contacts: AsyncCollection[Document] = db["contacts"]
        # Statuses that arrived before their message was known, by key(tenant, wamid).
        self.orphan_statuses: AsyncCollection[Document] = db["orphan_statuses"]
        # Edits and revokes that arrived before the message they name, by key(tenant, that message's wamid).
        self.held_amendments: AsyncCollection[Document] = db["held_amendments"]
        # Which customer each id (a BSUID, every form of a number) belongs to (see waflow_common.customers).
        self.customer_links: AsyncCollection[Document] = db["customer_links"]

    async def create_indexes(self) -> None:
        # Chats and messages are read by `_id` alone (lists and timelines come from memory), so an index of
        # theirs would only cost every write; earlier versions made some, which go.
        for collection in (self.chats, self.messages):
            async for index in await collection.list_indexes():
                if index["name"] != "_id_":
                    await collection.drop_index(index["name"])
        await self.notes.create_index(
            [("tenant_id", ASCENDING), ("chat_id", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)]
        )

    def with_outbox(self) -> dict[str, AsyncCollection[Document]]:
        return {"chats": self.chats, "messages": self.messages, "notes": self.notes}

    def hold(self, collection: str, doc_id: str) -> AbstractAsyncContextManager[None]:
        return self.locks.hold(f"{collection}:{doc_id}")


def contact_view(snapshot: ContactSnapshot) -> Document:
    """What a chat shows of its contact (a copy, so the chat list filters without a join)."""
    return {
        "contact_id": snapshot.contact_id,
        "name": snapshot.name,
        "profile_name": snapshot.profile_name,
        "phone_e164": snapshot.phone_e164,
        "tags": list(snapshot.tags),
        "lists": [ref.model_dump() for ref in snapshot.lists],
        "fields": dict(snapshot.fields),
        "deleted": snapshot.deleted,
        "blacklisted": snapshot.blacklisted or snapshot.deleted,
    }


def page_filter(base: Document, cursor: str | None, field: str = "at") -> Document:
    """Newest first, keyed by (field, _id): the cursor resumes strictly after the last item returned."""
    if cursor is None:
        return base
    at, item_id = domain.decode_cursor(cursor)
    after = {"$or": [{field: {"$lt": at}}, {field: at, "_id": {"$lt": item_id}}]}
    return {"$and": [base, after]}


def next_cursor(items: list[Document], limit: int, field: str = "at") -> tuple[list[Document], str | None]:
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    last = items[-1]
    return items, domain.encode_cursor(last[field], last["_id"])
