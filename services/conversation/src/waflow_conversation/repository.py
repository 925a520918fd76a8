"""Chats in MongoDB: creation, the contacts projection, inbound messages' effect on a chat, read state, windows.

Every query starts with tenant_id. Nothing here relies on multi-document transactions: each effect is one
conditional update (optimistic on the fields it relied on) or an idempotent upsert, and an event that must
accompany a change rides in the same document's outbox.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from waflow_common.events.contacts import ContactSnapshot
from waflow_common.events.conversation import (
    ChatOpened,
    ChatOpenedEvent,
    ChatRead,
    ChatReadEvent,
    ChatUnread,
    ChatUnreadEvent,
    WindowChanged,
    WindowClosedEvent,
    WindowClosingEvent,
    WindowOpenedEvent,
)
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.events.inbound import MessageReceived
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.outbox_relay import KeyedLocks

Document = dict[str, Any]

# The chat keeps the ids of inbound messages it counted until the message itself records it was counted
# (see `record_inbound`); past this many the oldest, long since recorded, are dropped.
APPLIED_KEEP = 64
# Optimistic updates retry when a concurrent writer changed what they relied on; this many is never reached in
# practice (one partition feeds one chat) but bounds a pathological loop.
MAX_ATTEMPTS = 50


class ChatNotFound(Exception):
    pass


class ConcurrentUpdate(RuntimeError):
    """Could not apply an optimistic update after MAX_ATTEMPTS (the consumer retries the record)."""


@dataclass(frozen=True)
class Cause:
    """The event a change follows from, so the events it announces carry its correlation and causation."""

    correlation_id: str
    event_id: uuid.UUID


@dataclass(frozen=True)
class ChatFilter:
    unread: bool = False
    tag: str | None = None
    list_id: str | None = None
    search: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[Document]
    next_cursor: str | None


class Collections:
    """The service's collections and their indexes (created at start; idempotent)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        # Shared by every writer of these collections and the outbox relay (see outbox_relay).
        self.locks = KeyedLocks()
        self.chats: AsyncCollection[Document] = db["chats"]
        self.messages: AsyncCollection[Document] = db["messages"]
        self.notes: AsyncCollection[Document] = db["notes"]
        self.contacts: AsyncCollection[Document] = db["contacts"]
        self.orphan_statuses: AsyncCollection[Document] = db["orphan_statuses"]

    async def create_indexes(self) -> None:
        await self.chats.create_index(
            [("tenant_id", ASCENDING), ("phone_number_id", ASCENDING), ("wa_id", ASCENDING)], unique=True
        )
        await self.chats.create_index([("tenant_id", ASCENDING), ("last_activity_at", DESCENDING), ("_id", DESCENDING)])
        await self.chats.create_index([("tenant_id", ASCENDING), ("wa_id", ASCENDING)])
        await self.chats.create_index(
            [("tenant_id", ASCENDING), ("window_state", ASCENDING), ("window_expires_at", ASCENDING)]
        )
        await self.messages.create_index([("tenant_id", ASCENDING), ("wamid", ASCENDING)], unique=True)
        await self.messages.create_index(
            [("tenant_id", ASCENDING), ("chat_id", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.messages.create_index([("tenant_id", ASCENDING), ("chat_id", ASCENDING), ("type", ASCENDING)])
        await self.notes.create_index(
            [("tenant_id", ASCENDING), ("chat_id", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.contacts.create_index([("tenant_id", ASCENDING), ("wa_id", ASCENDING)], unique=True)
        await self.orphan_statuses.create_index([("tenant_id", ASCENDING), ("wamid", ASCENDING)])

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


Parked = Callable[[str, str], None]


class ChatRepository:
    def __init__(self, collections: Collections, clock: Clock, parked: Parked) -> None:
        self._c = collections
        self._clock = clock
        self._parked = parked

    # --- reading ------------------------------------------------------------------------------------------
    async def get(self, tenant_id: str, chat_id: str) -> Document:
        chat = await self._c.chats.find_one({"tenant_id": tenant_id, "_id": chat_id})
        if chat is None:
            raise ChatNotFound(chat_id)
        return chat

    async def find(self, tenant_id: str, phone_number_id: str, wa_id: str) -> Document | None:
        return await self._c.chats.find_one(
            {"tenant_id": tenant_id, "phone_number_id": phone_number_id, "wa_id": wa_id}
        )

    async def page(self, tenant_id: str, filters: ChatFilter, cursor: str | None, limit: int) -> Page:
        clauses: list[Document] = [{"tenant_id": tenant_id}]
        if filters.unread:
            clauses.append({"unread_count": {"$gt": 0}})
        if filters.tag:
            clauses.append({"contact.tags": filters.tag})
        if filters.list_id:
            clauses.append({"contact.lists.list_id": filters.list_id})
        if filters.search:
            pattern = {"$regex": re.escape(filters.search.strip()), "$options": "i"}
            digits = re.sub(r"\D", "", filters.search)
            by_text: list[Document] = [
                {"contact.name": pattern},
                {"contact.profile_name": pattern},
                {"profile_name": pattern},
            ]
            if digits:
                by_text.append({"wa_id": {"$regex": re.escape(digits)}})
            clauses.append({"$or": by_text})
        base = {"$and": clauses} if len(clauses) > 1 else clauses[0]
        query = page_filter(base, cursor, "last_activity_at")
        docs = await (
            self._c.chats.find(query, {"applied": 0, "outbox": 0})
            .sort([("last_activity_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
            .to_list()
        )
        items, cursor_out = next_cursor(docs, limit, "last_activity_at")
        return Page(items, cursor_out)

    async def contact(self, tenant_id: str, wa_id: str) -> Document | None:
        return await self._c.contacts.find_one({"tenant_id": tenant_id, "wa_id": wa_id})

    # --- creating ---------------------------------------------------------------------------------------------
    async def ensure(
        self, tenant_id: str, phone_number_id: str, wa_id: str, *, profile_name: str | None = None
    ) -> Document:
        """The chat with this customer on this number, created if new (safe to race: the id is derived)."""
        chat_id = domain.chat_id_for(tenant_id, phone_number_id, wa_id)
        chat = await self._c.chats.find_one({"tenant_id": tenant_id, "_id": chat_id})
        if chat is None:
            chat = self._new_chat(tenant_id, chat_id, phone_number_id, wa_id, profile_name)
            try:
                await self._c.chats.insert_one(chat)
            except DuplicateKeyError:
                return await self.get(tenant_id, chat_id)
            await self._copy_contact(tenant_id, chat_id, wa_id)
        elif profile_name and chat.get("profile_name") != profile_name:
            async with self._c.hold("chats", chat_id):
                await self._c.chats.update_one(
                    {"tenant_id": tenant_id, "_id": chat_id}, {"$set": {"profile_name": profile_name}}
                )
        return chat

    async def open_by_phone(
        self, tenant_id: str, phone_number_id: str, wa_id: str, opened_by: str
    ) -> tuple[Document, bool]:
        """An agent starts a chat: returns (chat, created); a new one announces chat.opened in its outbox."""
        chat_id = domain.chat_id_for(tenant_id, phone_number_id, wa_id)
        existing = await self._c.chats.find_one({"tenant_id": tenant_id, "_id": chat_id})
        if existing is not None:
            return existing, False
        now = self._clock()
        event = ChatOpenedEvent.new(
            tenant_id=tenant_id,
            payload=ChatOpened(
                chat_id=chat_id,
                phone_number_id=phone_number_id,
                wa_id=wa_id,
                phone_e164="+" + wa_id,
                opened_by=opened_by,
            ),
            event_id=derived_event_id("chat.opened", tenant_id, chat_id),
            clock=lambda: now,
        )
        chat = self._new_chat(tenant_id, chat_id, phone_number_id, wa_id, None) | {"outbox": [outbox_entry(event)]}
        try:
            await self._c.chats.insert_one(chat)
        except DuplicateKeyError:
            return await self.get(tenant_id, chat_id), False
        self._parked("chats", chat_id)
        await self._copy_contact(tenant_id, chat_id, wa_id)
        return await self.get(tenant_id, chat_id), True

    def _new_chat(
        self, tenant_id: str, chat_id: str, phone_number_id: str, wa_id: str, profile_name: str | None
    ) -> Document:
        now = self._clock()
        return {
            "_id": chat_id,
            "tenant_id": tenant_id,
            "phone_number_id": phone_number_id,
            "wa_id": wa_id,
            "profile_name": profile_name,
            "created_at": now,
            "contact": None,
            "contact_version": 0,
            "last_activity_at": now,
            "last_message": None,
            "last_message_at": None,
            "unread_count": 0,
            "manual_unread": False,
            "last_inbound_wamid": None,
            "last_inbound_at": None,
            "window_opened_at": None,
            "window_expires_at": None,
            "window_state": "closed",
            "applied": [],
            "outbox": [],
        }

    async def _copy_contact(self, tenant_id: str, chat_id: str, wa_id: str) -> None:
        contact = await self.contact(tenant_id, wa_id)
        if contact is None:
            return
        async with self._c.hold("chats", chat_id):
            await self._c.chats.update_one(
                {"tenant_id": tenant_id, "_id": chat_id, "contact_version": {"$lt": contact["version"]}},
                {"$set": {"contact": contact["view"], "contact_version": contact["version"]}},
            )

    # --- the contacts projection ---------------------------------------------------------------------------
    async def apply_contact(self, tenant_id: str, snapshot: ContactSnapshot) -> None:
        """Keeps the highest version; chats of that customer get the same copy under the same rule."""
        view = contact_view(snapshot)
        with contextlib.suppress(DuplicateKeyError):  # what we hold is as new or newer
            await self._c.contacts.update_one(
                {"_id": f"{tenant_id}:{snapshot.wa_id}", "tenant_id": tenant_id, "version": {"$lt": snapshot.version}},
                {"$set": {"wa_id": snapshot.wa_id, "version": snapshot.version, "view": view}},
                upsert=True,
            )
        chats = await self._c.chats.find({"tenant_id": tenant_id, "wa_id": snapshot.wa_id}, {"_id": 1}).to_list()
        for chat in chats:
            async with self._c.hold("chats", chat["_id"]):
                await self._c.chats.update_one(
                    {"tenant_id": tenant_id, "_id": chat["_id"], "contact_version": {"$lt": snapshot.version}},
                    {"$set": {"contact": view, "contact_version": snapshot.version}},
                )

    # --- inbound messages ------------------------------------------------------------------------------------
    async def apply_inbound(
        self, chat_id: str, tenant_id: str, message_id: str, m: MessageReceived, cause: Cause | None = None
    ) -> None:
        """Counts the message once, moves activity, preview and window; announces a window (re)opening."""
        async with self._c.hold("chats", chat_id):
            await self._apply_inbound(chat_id, tenant_id, message_id, m, cause)

    async def _apply_inbound(
        self, chat_id: str, tenant_id: str, message_id: str, m: MessageReceived, cause: Cause | None
    ) -> None:
        for _ in range(MAX_ATTEMPTS):
            chat = await self.get(tenant_id, chat_id)
            if message_id in chat.get("applied", ()):
                return
            condition: Document = {
                "tenant_id": tenant_id,
                "_id": chat_id,
                "applied": {"$ne": message_id},
                "last_message_at": chat.get("last_message_at"),
                "last_inbound_at": chat.get("last_inbound_at"),
                "window_expires_at": chat.get("window_expires_at"),
                "window_state": chat.get("window_state"),
            }
            update = self._inbound_update(chat, message_id, m, cause)
            result = await self._c.chats.find_one_and_update(condition, update, return_document=ReturnDocument.AFTER)
            if result is not None:
                if "outbox" in update["$push"]:
                    self._parked("chats", chat_id)
                applied: list[str] = result.get("applied", [])
                if len(applied) > APPLIED_KEEP:
                    stale = applied[: len(applied) - APPLIED_KEEP // 2]
                    await self._c.chats.update_one(
                        {"tenant_id": tenant_id, "_id": chat_id}, {"$pull": {"applied": {"$in": stale}}}
                    )
                return
        raise ConcurrentUpdate(f"chat {chat_id} kept changing")

    def _inbound_update(self, chat: Document, message_id: str, m: MessageReceived, cause: Cause | None) -> Document:
        content = m.content.model_dump(mode="json")
        at = domain.millis(m.timestamp)
        sets: Document = {}
        push: Document = {"applied": message_id}
        inc: Document = {}
        if m.profile_name:
            sets["profile_name"] = m.profile_name
        if chat.get("last_message_at") is None or at >= chat["last_message_at"]:
            sets["last_message"] = {
                "message_id": message_id,
                "wamid": m.wamid,
                "direction": "in",
                "type": m.content.type,
                "preview": domain.preview(content),
                "at": at,
            }
            sets["last_message_at"] = at
        if domain.counts_as_unread(m.content.type):
            inc["unread_count"] = 1
            if chat.get("last_inbound_at") is None or at >= chat["last_inbound_at"]:
                sets["last_inbound_wamid"] = m.wamid
                sets["last_inbound_at"] = at
        if m.opens_window:
            sets |= self._window_refresh(chat, at, push, cause)
        update: Document = {"$push": push, "$max": {"last_activity_at": at}}
        if sets:
            update["$set"] = sets
        if inc:
            update["$inc"] = inc
        return update

    def _window_refresh(self, chat: Document, at: datetime, push: Document, cause: Cause | None) -> Document:
        current: datetime | None = chat.get("window_expires_at")
        expires = domain.refreshed_expiry(current, at)
        if expires == current:
            return {}
        sets: Document = {"window_expires_at": expires, "window_state": "open"}
        was_open = chat.get("window_state") != "closed" and domain.window_open(current, at)
        if was_open:
            return sets
        events: list[Document] = []
        if chat.get("window_state") != "closed" and current is not None:
            # The sweep had not yet announced the old window's end: do it here so nobody misses it.
            events.append(outbox_entry(self._window_event(WindowClosedEvent, chat, current, at=current, cause=cause)))
        sets["window_opened_at"] = at
        opened = chat | {"window_opened_at": at}
        events.append(outbox_entry(self._window_event(WindowOpenedEvent, opened, expires, at=at, cause=cause)))
        push["outbox"] = {"$each": events}
        return sets

    def _window_event(
        self,
        cls: type[WindowOpenedEvent] | type[WindowClosingEvent] | type[WindowClosedEvent],
        chat: Document,
        expires_at: datetime,
        *,
        at: datetime,
        cause: Cause | None = None,
    ) -> WindowOpenedEvent | WindowClosingEvent | WindowClosedEvent:
        kind = cls.model_fields["event_type"].default
        return cls.new(
            tenant_id=chat["tenant_id"],
            payload=WindowChanged(
                chat_id=chat["_id"],
                phone_number_id=chat["phone_number_id"],
                wa_id=chat["wa_id"],
                opened_at=chat.get("window_opened_at"),
                expires_at=expires_at,
            ),
            occurred_at=at,
            event_id=derived_event_id(kind, chat["tenant_id"], chat["_id"], expires_at.isoformat()),
            correlation_id=cause.correlation_id if cause else None,
            causation_id=cause.event_id if cause else None,
            clock=self._clock,
        )

    async def note_outbound(self, tenant_id: str, chat_id: str, last_message: Document) -> None:
        """An agent's message moves the chat's activity and preview (never backwards)."""
        at: datetime = last_message["at"]
        async with self._c.hold("chats", chat_id):
            await self._c.chats.update_one(
                {
                    "tenant_id": tenant_id,
                    "_id": chat_id,
                    "$or": [{"last_message_at": None}, {"last_message_at": {"$lte": at}}],
                },
                {"$set": {"last_message": last_message, "last_message_at": at}},
            )
            await self._c.chats.update_one({"tenant_id": tenant_id, "_id": chat_id}, {"$max": {"last_activity_at": at}})

    # --- read state --------------------------------------------------------------------------------------------
    async def mark_read(self, tenant_id: str, chat_id: str, read_by: str) -> Document:
        """Zero unread and announce chat.read with the newest inbound wamid (outbound sends the read receipt).

        Conditional on the count and wamid it read, so an inbound message counted meanwhile is never lost.
        """
        async with self._c.hold("chats", chat_id):
            chat = await self._mark_read(tenant_id, chat_id, read_by)
        marked = await self._c.messages.find(
            {"tenant_id": tenant_id, "chat_id": chat_id, "manual_unread": True}, {"_id": 1}
        ).to_list()
        for message in marked:
            async with self._c.hold("messages", message["_id"]):
                await self._c.messages.update_one(
                    {"tenant_id": tenant_id, "_id": message["_id"]}, {"$set": {"manual_unread": False}}
                )
        return chat

    async def _mark_read(self, tenant_id: str, chat_id: str, read_by: str) -> Document:
        for _ in range(MAX_ATTEMPTS):
            chat = await self.get(tenant_id, chat_id)
            if chat["unread_count"] == 0 and not chat.get("manual_unread"):
                return chat
            event = ChatReadEvent.new(
                tenant_id=tenant_id,
                payload=ChatRead(
                    chat_id=chat_id,
                    phone_number_id=chat["phone_number_id"],
                    wa_id=chat["wa_id"],
                    read_by=read_by,
                    last_inbound_wamid=chat.get("last_inbound_wamid"),
                ),
                clock=self._clock,
            )
            result = await self._c.chats.find_one_and_update(
                {
                    "tenant_id": tenant_id,
                    "_id": chat_id,
                    "unread_count": chat["unread_count"],
                    "last_inbound_wamid": chat.get("last_inbound_wamid"),
                },
                {
                    "$set": {"unread_count": 0, "manual_unread": False, "read_at": self._clock()},
                    "$push": {"outbox": outbox_entry(event)},
                },
                return_document=ReturnDocument.AFTER,
            )
            if result is not None:
                self._parked("chats", chat_id)
                return result
        raise ConcurrentUpdate(f"chat {chat_id} kept changing")

    async def unread_chat_ids(self, tenant_id: str) -> list[str]:
        docs = await self._c.chats.find(
            {"tenant_id": tenant_id, "$or": [{"unread_count": {"$gt": 0}}, {"manual_unread": True}]}, {"_id": 1}
        ).to_list()
        return [d["_id"] for d in docs]

    async def mark_unread(self, tenant_id: str, chat_id: str, marked_by: str) -> Document:
        """At least one unread, so the chat stays unread until someone reads it; announces chat.unread."""
        async with self._c.hold("chats", chat_id):
            return await self._mark_unread(tenant_id, chat_id, marked_by)

    async def _mark_unread(self, tenant_id: str, chat_id: str, marked_by: str) -> Document:
        for _ in range(MAX_ATTEMPTS):
            chat = await self.get(tenant_id, chat_id)
            count = max(chat["unread_count"], 1)
            event = ChatUnreadEvent.new(
                tenant_id=tenant_id,
                payload=ChatUnread(
                    chat_id=chat_id,
                    phone_number_id=chat["phone_number_id"],
                    wa_id=chat["wa_id"],
                    unread_count=count,
                    marked_by=marked_by,
                ),
                clock=self._clock,
            )
            result = await self._c.chats.find_one_and_update(
                {"tenant_id": tenant_id, "_id": chat_id, "unread_count": chat["unread_count"]},
                {"$set": {"unread_count": count, "manual_unread": True}, "$push": {"outbox": outbox_entry(event)}},
                return_document=ReturnDocument.AFTER,
            )
            if result is not None:
                self._parked("chats", chat_id)
                return result
        raise ConcurrentUpdate(f"chat {chat_id} kept changing")

    # --- the window sweep ------------------------------------------------------------------------------------
    async def sweep_windows(self, tenant_id: str, now: datetime, lead: timedelta) -> int:
        """Announces window.closing and window.closed for this tenant's chats; returns how many it announced."""
        announced = 0
        due = self._c.chats.find(
            {
                "tenant_id": tenant_id,
                "window_state": {"$in": ["open", "closing"]},
                "window_expires_at": {"$lte": now + lead},
            },
            {"applied": 0, "outbox": 0},
        )
        async for chat in due:
            expires: datetime = chat["window_expires_at"]
            phase = domain.window_phase(expires, now, lead)
            if phase == chat["window_state"] or phase == "open":
                continue
            cls = WindowClosedEvent if phase == "closed" else WindowClosingEvent
            event = self._window_event(cls, chat, expires, at=expires if phase == "closed" else now)
            async with self._c.hold("chats", chat["_id"]):
                result = await self._c.chats.update_one(
                    {
                        "tenant_id": tenant_id,
                        "_id": chat["_id"],
                        "window_state": chat["window_state"],
                        "window_expires_at": expires,
                    },
                    {"$set": {"window_state": phase}, "$push": {"outbox": outbox_entry(event)}},
                )
            if result.modified_count:
                self._parked("chats", chat["_id"])
                announced += 1
        return announced


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]
