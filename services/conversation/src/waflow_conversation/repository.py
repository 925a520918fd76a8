"""Chats in MongoDB: creation, the contacts projection, inbound messages' effect on a chat, read state, windows.

Designed around FerretDB v1 on SQLite, as measured: only a filter that is exactly `{"_id": ...}` reaches
SQLite's index (`find_one` by `_id` takes ~1 ms at 20k documents; the same filter plus `tenant_id` reads the
whole collection: ~120 ms at 5k), and an update is read-modify-write without isolation (40 concurrent `$inc`
end at 7). So:
- every document's `_id` is `<tenant_id>:<public id>` (`key`): a single-document read or write names only that
  `_id`, and another tenant's id simply does not exist;
- every write to a document holds that document's lock (`Collections.hold`), reads it, decides in Python with
  the domain rules and writes it back, so no two writers in this process ever lose an update;
- every chat is also kept in memory (`ChatIndex`), written beside the document under the same lock, so the chat
  list, the window sweep and the inbound path read no chats from the server; scans are left to notes.
Nothing relies on multi-document transactions; an event that must accompany a change rides in the same
document's outbox (see waflow_common.outbox). The notes index serves MongoDB proper.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from waflow_common.customers import CustomerLinks, PhoneNumber, customer_id, is_bsuid
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
from waflow_common.locks import KeyedLocks
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.chat_index import ChatFilter, ChatIndex, matcher

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


class ChatRepository:
    def __init__(
        self, collections: Collections, clock: Clock, parked: Parked, numbers: Callable[[str], list[str]]
    ) -> None:
        self._c = collections
        self._clock = clock
        self._parked = parked
        self._numbers = numbers  # a tenant's phone_number_ids: a customer has one chat per number
        self._index = ChatIndex()
        self._links = CustomerLinks(collections.customer_links)
        # Chats whose last write failed: it may or may not have happened, so they are read again before use.
        self._unsure: set[str] = set()

    async def load(self) -> None:
        """Reads every chat once (at start) into memory."""
        async for chat in self._c.chats.find({}, {"outbox": 0}):
            self._index.put(chat)

    # --- the kept copy ------------------------------------------------------------------------------------
    async def _held(self, chat_key: str) -> Document | None:
        """The chat as it is now; the caller holds its lock. Read from the server only when not kept or unsure."""
        chat = self._index.get(chat_key)
        if chat is not None and chat_key not in self._unsure:
            return chat
        chat = await self._c.chats.find_one({"_id": chat_key}, {"outbox": 0})
        self._unsure.discard(chat_key)
        if chat is None:
            self._index.drop(chat_key)
            return None
        return self._index.put(chat)

    async def _write(self, chat_key: str, update: Document, sets: Document) -> Document:
        """Updates one chat (its lock held, its `$set` being `sets`) and keeps the result."""
        try:
            await self._c.chats.update_one({"_id": chat_key}, update)
        except BaseException:
            self._unsure.add(chat_key)
            raise
        return self._index.update(chat_key, sets)

    async def _existing(self, chat_key: str, chat_id: str) -> Document:
        chat = await self._held(chat_key)
        if chat is None:
            raise ChatNotFound(chat_id)
        return chat

    async def _settle(self) -> None:
        """Reads again the chats a failed write left unsure, so a list shows what the server holds."""
        for chat_key in list(self._unsure):
            async with self._c.hold("chats", chat_key):
                await self._held(chat_key)

    # --- reading ------------------------------------------------------------------------------------------
    async def get(self, tenant_id: str, chat_id: str) -> Document:
        chat_key = key(tenant_id, chat_id)
        chat = self._index.get(chat_key)
        if chat is None or chat_key in self._unsure:
            async with self._c.hold("chats", chat_key):
                chat = await self._held(chat_key)
        if chat is None:
            raise ChatNotFound(chat_id)
        return chat

    async def page(self, tenant_id: str, filters: ChatFilter, cursor: str | None, limit: int) -> Page:
        """Newest activity first, filtered; the cursor resumes strictly after the last chat returned."""
        after = domain.decode_cursor(cursor) if cursor is not None else None
        await self._settle()
        items, resume = self._index.page(tenant_id, matcher(filters), after, limit)
        return Page(items, domain.encode_cursor(*resume) if resume is not None else None)

    async def contact(self, tenant_id: str, customer: str) -> Document | None:
        """The contacts projection's copy of a customer (`customer` as `customer_of` gives it)."""
        return await self._c.contacts.find_one({"_id": key(tenant_id, customer)})

    # --- who a customer is ----------------------------------------------------------------------------------
    def _known(self, tenant_id: str) -> Callable[[str], Awaitable[bool]]:
        """Whether something is kept under this id: chats and contacts made before links were kept are found so."""

        async def known(identity: str) -> bool:
            for phone_number_id in self._numbers(tenant_id):
                if self._index.get(key(tenant_id, domain.chat_id_for(tenant_id, phone_number_id, identity))):
                    return True
            return await self.contact(tenant_id, identity) is not None

        return known

    async def customer_of(self, tenant_id: str, wa_id: str, user_id: str | None = None) -> str:
        """The key of the customer these ids belong to (their chats and contact copy are kept under it); a BSUID
        that appears for a customer known by phone joins them, so they keep their chat."""
        return await self._links.resolve(tenant_id, wa_id, user_id, known=self._known(tenant_id))

    async def customer_for_phone(self, tenant_id: str, phone: PhoneNumber) -> str:
        """The customer a typed number belongs to, whichever of its wa_id forms they were seen with."""
        return await self._links.resolve_ids(tenant_id, phone.wa_ids, phone.wa_id, known=self._known(tenant_id))

    # --- creating ---------------------------------------------------------------------------------------------
    async def _create(self, chat: Document) -> Document | None:
        """Inserts a new chat (its lock held) and keeps it; None if it existed already (it is read again)."""
        try:
            await self._c.chats.insert_one(chat)
        except BaseException as exc:
            self._unsure.add(chat["_id"])
            if isinstance(exc, DuplicateKeyError):
                return None
            raise
        return self._index.put(chat)

    async def open_by_phone(
        self, tenant_id: str, phone_number_id: str, customer: str, phone: PhoneNumber, opened_by: str
    ) -> tuple[Document, bool]:
        """An agent starts a chat with `customer` (`customer_for_phone`): returns (chat, created); a new one
        announces chat.opened in its outbox."""
        chat_id = domain.chat_id_for(tenant_id, phone_number_id, customer)
        chat_key = key(tenant_id, chat_id)
        # The wa_id the customer was seen with, if they were; a BSUID-first customer keeps their BSUID.
        wa_id, user_id = (phone.wa_id, customer) if is_bsuid(customer) else (customer, None)
        now = self._clock()
        event = ChatOpenedEvent.new(
            tenant_id=tenant_id,
            payload=ChatOpened(
                chat_id=chat_id,
                phone_number_id=phone_number_id,
                wa_id=wa_id,
                user_id=user_id,
                phone_e164=phone.e164,
                opened_by=opened_by,
            ),
            event_id=derived_event_id("chat.opened", tenant_id, chat_id),
            clock=lambda: now,
        )
        async with self._c.hold("chats", chat_key):
            existing = await self._held(chat_key)
            if existing is not None:
                return existing, False
            new = await self._new_chat(tenant_id, chat_id, phone_number_id, wa_id, None, user_id, customer)
            created = await self._create(new | {"outbox": [outbox_entry(event)]})
            if created is None:
                return await self._existing(chat_key, chat_id), False
        self._parked("chats", chat_key)
        return created, True

    async def _new_chat(
        self,
        tenant_id: str,
        chat_id: str,
        phone_number_id: str,
        wa_id: str,
        profile_name: str | None,
        user_id: str | None = None,
        customer: str | None = None,
    ) -> Document:
        """A chat about to be created (its lock held), showing the contact the projection holds: a contact change
        that lands meanwhile waits for the lock and then finds the chat. It stores both of the customer's ids."""
        now = domain.millis(self._clock())
        contact = await self.contact(tenant_id, customer or customer_id(wa_id, user_id))
        return {
            "_id": key(tenant_id, chat_id),
            "chat_id": chat_id,
            "tenant_id": tenant_id,
            "phone_number_id": phone_number_id,
            "wa_id": wa_id,
            "user_id": user_id,
            "profile_name": profile_name,
            "created_at": now,
            "contact": contact["view"] if contact else None,
            "contact_version": contact["version"] if contact else 0,
            "last_activity_at": now,
            "last_message": None,
            "last_message_at": None,
            "unread_count": 0,
            "manual_unread": False,
            "manual_unread_ids": [],
            "last_inbound_wamid": None,
            "last_inbound_at": None,
            "window_opened_at": None,
            "window_expires_at": None,
            "window_state": "closed",
            "applied": [],
            "outbox": [],
        }

    async def _set_contact(self, chat_key: str, view: Document, version: int) -> None:
        async with self._c.hold("chats", chat_key):
            chat = await self._held(chat_key)
            if chat is not None and chat.get("contact_version", 0) < version:
                sets = {"contact": view, "contact_version": version}
                await self._write(chat_key, {"$set": sets}, sets)

    # --- the contacts projection ---------------------------------------------------------------------------
    async def apply_contact(self, tenant_id: str, snapshot: ContactSnapshot) -> None:
        """Keeps the highest version; chats of that customer get the same copy under the same rule.

        Either order of "chat created" and "contact changed" ends with the chat showing the newest contact:
        a new chat copies what the projection holds, and a contact change updates the chats that exist.
        """
        view = contact_view(snapshot)
        customer = await self.customer_of(tenant_id, snapshot.wa_id, snapshot.user_id)
        contact_key = key(tenant_id, customer)
        async with self._c.hold("contacts", contact_key):
            held = await self._c.contacts.find_one({"_id": contact_key})
            if held is None:
                with contextlib.suppress(DuplicateKeyError):
                    await self._c.contacts.insert_one(
                        {
                            "_id": contact_key,
                            "tenant_id": tenant_id,
                            "wa_id": snapshot.wa_id,
                            "user_id": snapshot.user_id,
                            "version": snapshot.version,
                            "view": view,
                        }
                    )
            elif held["version"] < snapshot.version:
                await self._c.contacts.update_one(
                    {"_id": contact_key}, {"$set": {"version": snapshot.version, "view": view}}
                )
        for phone_number_id in self._numbers(tenant_id):
            chat_id = domain.chat_id_for(tenant_id, phone_number_id, customer)
            await self._set_contact(key(tenant_id, chat_id), view, snapshot.version)

    # --- inbound messages ------------------------------------------------------------------------------------
    async def apply_inbound(
        self,
        tenant_id: str,
        chats: Sequence[tuple[str, Sequence[tuple[str, MessageReceived, Cause | None]]]],
        *,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Counts each message once, moves activity, preview and window; announces a window (re)opening.

        A customer's first message creates the chat with that message already counted (and the contact's copy
        from the projection), so no one ever sees a new chat without its first message or with its window shut.
        Each chat's messages (at most APPLIED_KEEP, so that all of them are still in `applied` when their records
        are redelivered) are folded into one update, and the updates of all the chats go in one bulk write: each
        update is a read-modify-write on FerretDB, and one command for many costs a third of one each.

        `then` (storing the messages) runs after the chats are written and before anyone sees the new counts: the
        chats stay locked and their new state is shown only once it returns, so a chat never lists a message that
        its timeline does not have yet.
        """
        for _, received in chats:
            if len(received) > APPLIED_KEEP:
                raise ValueError(f"at most {APPLIED_KEEP} messages per write, not {len(received)}")
        chat_keys = sorted({key(tenant_id, chat_id) for chat_id, _ in chats})
        parked: list[str] = []
        try:
            await self._apply_inbound(tenant_id, chats, chat_keys, parked, then)
        finally:
            for chat_key in parked:
                self._parked("chats", chat_key)

    async def _apply_inbound(
        self,
        tenant_id: str,
        chats: Sequence[tuple[str, Sequence[tuple[str, MessageReceived, Cause | None]]]],
        chat_keys: list[str],
        parked: list[str],
        then: Callable[[], Awaitable[None]] | None,
    ) -> None:
        async with contextlib.AsyncExitStack() as held:
            for chat_key in chat_keys:  # one order for every multi-chat writer: no deadlock
                await held.enter_async_context(self._c.hold("chats", chat_key))
            writes: list[InsertOne[Document] | UpdateOne] = []
            states: dict[str, Document] = {}
            for chat_id, received in chats:
                chat_key = key(tenant_id, chat_id)
                chat = await self._held(chat_key)
                new = chat is None
                if chat is None:
                    m = received[0][1]
                    customer = await self.customer_of(tenant_id, m.wa_id, m.user_id)  # linked already: kept
                    chat = await self._new_chat(
                        tenant_id, chat_id, m.phone_number_id, m.wa_id, m.profile_name, m.user_id, customer
                    )
                folded = self._fold_inbound(chat, received)
                if folded is None:
                    continue  # every one of them was counted before
                update, state, announces = folded
                if new:
                    outbox = update.get("$push", {}).get("outbox", {}).get("$each", [])
                    writes.append(InsertOne(state | {"outbox": outbox}))
                else:
                    writes.append(UpdateOne({"_id": chat_key}, update))
                states[chat_key] = state
                if announces:
                    parked.append(chat_key)
            if writes:
                try:
                    await self._c.chats.bulk_write(writes, ordered=False)
                except BaseException:
                    # Some may be written: the next attempt reads those chats (and what they counted) again.
                    self._unsure.update(chat_keys)
                    raise
            try:
                if then is not None:
                    await then()
            finally:
                for state in states.values():  # what the server holds now, whether or not `then` went through
                    self._index.put(state)

    def _fold_inbound(
        self, chat: Document, received: Sequence[tuple[str, MessageReceived, Cause | None]]
    ) -> tuple[Document, Document, bool] | None:
        """The update that counts these messages on the chat, the chat's state after it, and whether it parks
        announcements in the chat's outbox; None if all of them were counted before."""
        events: list[Document] = []
        state = {k: v for k, v in chat.items() if k != "outbox"}
        applied: list[str] = list(chat.get("applied", []))
        sets: Document = {}
        inc: dict[str, int] = {}
        for message_id, m, cause in received:
            if message_id in applied:
                continue
            change, push, step = self._inbound_change(state, message_id, m, cause)
            events += push["outbox"]["$each"] if push else []
            applied = [*applied[-(APPLIED_KEEP - 1) :], message_id]
            sets |= change
            state |= change
            for field, by in step.items():
                inc[field] = inc.get(field, 0) + by
                state[field] = state.get(field, 0) + by
        if applied == chat.get("applied", []):
            return None
        sets["applied"] = state["applied"] = applied
        update: Document = {"$set": sets}
        if events:
            update["$push"] = {"outbox": {"$each": events}}
        if inc:
            update["$inc"] = inc
        return update, state, bool(events)

    def _inbound_change(
        self, chat: Document, message_id: str, m: MessageReceived, cause: Cause | None
    ) -> tuple[Document, Document, Document]:
        content = m.content.model_dump(mode="json")
        at = domain.millis(m.timestamp)
        sets: Document = {}
        push: Document = {}
        inc: Document = {}
        if m.profile_name:
            sets["profile_name"] = m.profile_name
        if m.user_id and not chat.get("user_id"):  # a BSUID joins the chat of a customer known by phone
            sets["user_id"] = m.user_id
        if m.wa_id and not chat.get("wa_id"):  # a number joins a BSUID-only customer's chat
            sets["wa_id"] = m.wa_id
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
        if at > chat["last_activity_at"]:
            sets["last_activity_at"] = at
        if domain.counts_as_unread(m.content.type):
            inc["unread_count"] = 1
            if chat.get("last_inbound_at") is None or at >= chat["last_inbound_at"]:
                sets["last_inbound_wamid"] = m.wamid
                sets["last_inbound_at"] = at
        if m.opens_window:
            sets |= self._window_refresh(chat, at, push, cause)
        return sets, push, inc

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
                chat_id=chat["chat_id"],
                phone_number_id=chat["phone_number_id"],
                wa_id=chat["wa_id"],
                user_id=chat.get("user_id"),
                opened_at=chat.get("window_opened_at"),
                expires_at=expires_at,
            ),
            occurred_at=at,
            event_id=derived_event_id(kind, chat["tenant_id"], chat["chat_id"], expires_at.isoformat()),
            correlation_id=cause.correlation_id if cause else None,
            causation_id=cause.event_id if cause else None,
            clock=self._clock,
        )

    async def note_outbound(self, tenant_id: str, chat_id: str, last_message: Document) -> None:
        """An agent's message moves the chat's activity and preview (never backwards)."""
        at: datetime = last_message["at"]
        chat_key = key(tenant_id, chat_id)
        async with self._c.hold("chats", chat_key):
            chat = await self._existing(chat_key, chat_id)
            sets: Document = {}
            if chat.get("last_message_at") is None or chat["last_message_at"] <= at:
                sets |= {"last_message": last_message, "last_message_at": at}
            if chat["last_activity_at"] < at:
                sets["last_activity_at"] = at
            if sets:
                await self._write(chat_key, {"$set": sets}, sets)

    # --- read state --------------------------------------------------------------------------------------------
    async def mark_read(self, tenant_id: str, chat_id: str, read_by: str) -> Document:
        """Zero unread and announce chat.read with the newest inbound wamid (outbound sends the read receipt).

        Under the chat's lock, so an inbound message counted at the same moment lands before or after, never
        lost; a chat with nothing unread announces nothing.
        """
        chat_key = key(tenant_id, chat_id)
        async with self._c.hold("chats", chat_key):
            chat = await self._existing(chat_key, chat_id)
            if chat["unread_count"] == 0 and not chat.get("manual_unread"):
                return chat
            event = ChatReadEvent.new(
                tenant_id=tenant_id,
                payload=ChatRead(
                    chat_id=chat_id,
                    phone_number_id=chat["phone_number_id"],
                    wa_id=chat["wa_id"],
                    user_id=chat.get("user_id"),
                    read_by=read_by,
                    last_inbound_wamid=chat.get("last_inbound_wamid"),
                ),
                clock=self._clock,
            )
            cleared = {
                "unread_count": 0,
                "manual_unread": False,
                "manual_unread_ids": [],
                "read_at": domain.millis(self._clock()),
            }
            await self._write(chat_key, {"$set": cleared, "$push": {"outbox": outbox_entry(event)}}, cleared)
        self._parked("chats", chat_key)
        for message_id in chat.get("manual_unread_ids", []):
            message_key = key(tenant_id, message_id)
            async with self._c.hold("messages", message_key):
                await self._c.messages.update_one({"_id": message_key}, {"$set": {"manual_unread": False}})
        return await self.get(tenant_id, chat_id)

    async def unread_chat_ids(self, tenant_id: str) -> list[str]:
        await self._settle()
        return [
            chat["chat_id"]
            for chat in self._index.tenant(tenant_id)
            if chat["unread_count"] > 0 or chat.get("manual_unread")
        ]

    async def mark_unread(self, tenant_id: str, chat_id: str, message_id: str, marked_by: str) -> Document:
        """At least one unread, so the chat stays unread until someone reads it; announces chat.unread."""
        chat_key = key(tenant_id, chat_id)
        async with self._c.hold("chats", chat_key):
            chat = await self._existing(chat_key, chat_id)
            count = max(chat["unread_count"], 1)
            event = ChatUnreadEvent.new(
                tenant_id=tenant_id,
                payload=ChatUnread(
                    chat_id=chat_id,
                    phone_number_id=chat["phone_number_id"],
                    wa_id=chat["wa_id"],
                    user_id=chat.get("user_id"),
                    unread_count=count,
                    marked_by=marked_by,
                ),
                clock=self._clock,
            )
            marked = [i for i in chat.get("manual_unread_ids", []) if i != message_id] + [message_id]
            sets = {"unread_count": count, "manual_unread": True, "manual_unread_ids": marked}
            await self._write(chat_key, {"$set": sets, "$push": {"outbox": outbox_entry(event)}}, sets)
        self._parked("chats", chat_key)
        return await self.get(tenant_id, chat_id)

    # --- the window sweep ------------------------------------------------------------------------------------
    async def sweep_windows(self, tenant_id: str, now: datetime, lead: timedelta) -> int:
        """Announces window.closing and window.closed for this tenant's chats; returns how many it announced."""
        announced = 0
        await self._settle()
        due = [
            chat
            for chat in self._index.tenant(tenant_id)
            if chat["window_state"] in ("open", "closing") and chat["window_expires_at"] <= now + lead
        ]
        for chat in due:
            expires: datetime = chat["window_expires_at"]
            phase = domain.window_phase(expires, now, lead)
            if phase in (chat["window_state"], "open"):
                continue
            cls = WindowClosedEvent if phase == "closed" else WindowClosingEvent
            event = self._window_event(cls, chat, expires, at=expires if phase == "closed" else now)
            async with self._c.hold("chats", chat["_id"]):
                held = await self._held(chat["_id"])
                if held is None or (held["window_state"], held["window_expires_at"]) != (chat["window_state"], expires):
                    continue  # the customer wrote meanwhile: the window moved
                sets = {"window_state": phase}
                await self._write(chat["_id"], {"$set": sets, "$push": {"outbox": outbox_entry(event)}}, sets)
            self._parked("chats", chat["_id"])
            announced += 1
        return announced


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]
