"""Chats in MongoDB: creation, the contacts projection, read state; inbound messages' effect on a chat and the
window sweep are in repository_inbound.py, the shared basics in repository_base.py.

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
from collections.abc import Awaitable, Callable

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
)
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.chat_index import ChatFilter, ChatIndex, matcher
from waflow_conversation.repository_base import (
    APPLIED_KEEP,
    Cause,
    ChatNotFound,
    Collections,
    Document,
    MessageNotFound,
    Page,
    Parked,
    contact_view,
    key,
    next_cursor,
    page_filter,
)
from waflow_conversation.repository_inbound import ChatActivity

# What the other modules (and the tests) have always imported from here.
__all__ = [
    "APPLIED_KEEP",
    "Cause",
    "ChatNotFound",
    "ChatRepository",
    "Collections",
    "Document",
    "MessageNotFound",
    "Page",
    "Parked",
    "contact_view",
    "key",
    "new_request_id",
    "next_cursor",
    "page_filter",
]


class ChatRepository(ChatActivity):
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


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]
