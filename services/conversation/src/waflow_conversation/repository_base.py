"""What conversation's repositories share: document keys, the collections and their indexes, pages and cursors.

The design, for any number of instances writing at once:
- every document's `_id` is `<tenant_id>:<public id>` (`key`), so another tenant's id simply does not exist;
- lists (chats, timelines, notes) are queries on compound indexes that start with `tenant_id`, paged by a cursor
  on the sort key (`page_filter`, `next_cursor`); nothing is kept in process memory;
- a write is one atomic update: operators (`$inc`, `$max`, `$push`) and a condition in the filter, either a
  forward-only guard (a contact version, a window state, a chat still showing a message) or the `version` the
  writer read (`unchanged`): a writer whose document changed since it read it matches nothing, reads again and
  decides again;
- idempotency comes from unique keys: an inbound message's `_id` and `(tenant_id, wamid)`, a send's request id;
- an event that must accompany a change rides in the same document's outbox, in the same update
  (see waflow_common.outbox); no multi-document transaction is needed;
- what waits for something not seen yet (statuses and amendments of unknown wamids) expires after HELD_DAYS.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from waflow_common.events.contacts import ContactSnapshot
from waflow_common.leases import LEASES_COLLECTION
from waflow_common.outbox import OUTBOX_INDEX

from waflow_conversation import domain

Document = dict[str, Any]
Parked = Callable[[str, str], None]

# A chat remembers the last inbound messages it counted (`applied`): a message is stored first (unique `_id`,
# `counted: False`), then counted on its chat by a write whose condition is the chat's version, then marked
# counted. A record redelivered, or applied by two instances at once, finds its id in `applied` and counts
# nothing; one write counts at most this many messages of a chat and they are marked counted before the chat's
# next write, so all of them are in that list.
APPLIED_KEEP = 16

HELD_DAYS = 7
HELD_SECONDS = HELD_DAYS * 24 * 3600

NEWEST_FIRST = [("at", DESCENDING), ("_id", DESCENDING)]
CHAT_ORDER = [("last_activity_at", DESCENDING), ("_id", DESCENDING)]
NOT_LISTED = {"outbox": 0, "applied": 0}


def key(tenant_id: str, public_id: str) -> str:
    """The `_id` of a tenant's document."""
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


@dataclass(frozen=True)
class ChatFilter:
    unread: bool = False
    tag: str | None = None
    list_id: str | None = None
    search: str | None = None


def _list_index(name: str, *prefix: tuple[str, int]) -> IndexModel:
    return IndexModel([("tenant_id", ASCENDING), *prefix, *CHAT_ORDER], name=name)


class Collections:
    """The service's collections and their indexes (created at start; idempotent, reads no documents)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
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
        # Work no event drives (the window sweep, the outbox rescan): one instance at a time.
        self.leases: AsyncCollection[Document] = db[LEASES_COLLECTION]

    async def create_indexes(self) -> None:
        await self.chats.create_indexes(
            [
                _list_index("chat_list"),
                _list_index("chat_list_unread", ("has_unread", ASCENDING)),
                _list_index("chat_list_tag", ("contact.tags", ASCENDING)),
                _list_index("chat_list_list", ("contact.lists.list_id", ASCENDING)),
                IndexModel(
                    [("tenant_id", ASCENDING), ("window_state", ASCENDING), ("window_expires_at", ASCENDING)],
                    name="window_due",
                ),
                OUTBOX_INDEX,
            ]
        )
        await self.messages.create_indexes(
            [
                IndexModel([("tenant_id", ASCENDING), ("wamid", ASCENDING)], name="wamid", unique=True),
                IndexModel([("tenant_id", ASCENDING), ("chat_id", ASCENDING), *NEWEST_FIRST], name="timeline"),
                IndexModel(
                    [("tenant_id", ASCENDING), ("content.message_id", ASCENDING), ("at", DESCENDING)],
                    name="reactions",
                ),
                OUTBOX_INDEX,
            ]
        )
        await self.notes.create_indexes(
            [
                IndexModel([("tenant_id", ASCENDING), ("chat_id", ASCENDING), *NEWEST_FIRST], name="timeline"),
                OUTBOX_INDEX,
            ]
        )
        for held in (self.orphan_statuses, self.held_amendments):
            await held.create_index([("held_at", ASCENDING)], name="held_ttl", expireAfterSeconds=HELD_SECONDS)

    def with_outbox(self) -> dict[str, AsyncCollection[Document]]:
        return {"chats": self.chats, "messages": self.messages, "notes": self.notes}


def unchanged(doc: Document, field: str = "version") -> Document:
    """The filter that matches this document only while `field` still has the value it was read with."""
    value = doc.get(field)
    return {"_id": doc["_id"], field: value if field in doc else {"$exists": False}}


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


REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def regex_literal(text: str) -> str:
    """`text` as a regular expression matching it literally (only the characters every engine treats as special
    are escaped: some refuse an escaped letter or space)."""
    return "".join("\\" + c if c in REGEX_SPECIAL else c for c in text)


def chat_query(tenant_id: str, filters: ChatFilter) -> Document:
    """The chat list's filters, all of which must hold: a tag, a list, unread, and a search that is part of a
    name (any case) or whose digits are part of the number. Tag, list and unread each have an index; a search
    walks the tenant's chats in list order (the server has no text index, and a search is for any part)."""
    query: Document = {"tenant_id": tenant_id}
    if filters.unread:
        query["has_unread"] = True
    if filters.tag:
        query["contact.tags"] = filters.tag
    if filters.list_id:
        query["contact.lists.list_id"] = filters.list_id
    if filters.search:
        needle = {"$regex": regex_literal(filters.search.strip()), "$options": "i"}
        alternatives: list[Document] = [
            {"contact.name": needle},
            {"contact.profile_name": needle},
            {"profile_name": needle},
        ]
        digits = "".join(c for c in filters.search if c.isdigit())
        if digits:
            alternatives.append({"wa_id": {"$regex": digits}})
        query["$or"] = alternatives
    return query


def page_filter(base: Document, cursor: str | None, field: str = "at") -> Document:
    """Newest first, keyed by (field, _id): the cursor resumes strictly after the last item returned."""
    if cursor is None:
        return base
    at, item_id = domain.decode_cursor(cursor)
    after = {field: {"$lte": at}, "$or": [{field: {"$lt": at}}, {"_id": {"$lt": item_id}}]}
    return {"$and": [base, after]}


def next_cursor(items: list[Document], limit: int, field: str = "at") -> tuple[list[Document], str | None]:
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    last = items[-1]
    return items, domain.encode_cursor(last[field], last["_id"])
