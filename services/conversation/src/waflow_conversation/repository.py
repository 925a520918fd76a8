"""Chats in MongoDB: creation, the chat list, the contacts projection, read state; inbound messages' effect on a
chat and the window sweep are in repository_inbound.py, the shared basics (and the design) in repository_base.py.

Every instance reads and writes the database only: a chat is read by `_id`, the list is a query on an index that
starts with `tenant_id`, and a write that depends on what it read (read state, an inbound message's effect) is
conditional on the chat's `version` (`unchanged`); a miss reads the chat again and decides again.
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
from waflow_conversation.repository_base import (
    APPLIED_KEEP,
    CHAT_ORDER,
    NOT_LISTED,
    Cause,
    ChatFilter,
    ChatNotFound,
    Collections,
    Document,
    MessageNotFound,
    Page,
    Parked,
    chat_query,
    contact_view,
    key,
    next_cursor,
    page_filter,
    unchanged,
)
from waflow_conversation.repository_inbound import ChatActivity

# What the other modules (and the tests) have always imported from here.
__all__ = [
    "APPLIED_KEEP",
    "Cause",
    "ChatFilter",
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

# A write conditional on what was read is tried again this many times before the conflict is raised.
ATTEMPTS = 50


class ChatConflict(RuntimeError):
    """A chat kept changing under a conditional write (never expected: writers of one chat are few)."""


class ChatRepository(ChatActivity):
    def __init__(
        self, collections: Collections, clock: Clock, parked: Parked, numbers: Callable[[str], list[str]]
    ) -> None:
        self._c = collections
        self._clock = clock
        self._parked = parked
        self._numbers = numbers  # a tenant's phone_number_ids: a customer has one chat per number
        self._links = CustomerLinks(collections.customer_links)

    async def _read(self, chat_key: str) -> Document | None:
        return await self._c.chats.find_one({"_id": chat_key}, {"outbox": 0})

    async def _existing(self, chat_key: str, chat_id: str) -> Document:
        chat = await self._read(chat_key)
        if chat is None:
            raise ChatNotFound(chat_id)
        return chat

    # --- reading ------------------------------------------------------------------------------------------
    async def get(self, tenant_id: str, chat_id: str) -> Document:
        chat = await self._c.chats.find_one({"_id": key(tenant_id, chat_id)}, NOT_LISTED)
        if chat is None:
            raise ChatNotFound(chat_id)
        return chat

    async def page(self, tenant_id: str, filters: ChatFilter, cursor: str | None, limit: int) -> Page:
        """Newest activity first, filtered; the cursor resumes strictly after the last chat returned."""
        query = page_filter(chat_query(tenant_id, filters), cursor, "last_activity_at")
        docs = await self._c.chats.find(query, NOT_LISTED).sort(CHAT_ORDER).limit(limit + 1).to_list()
        items, resume = next_cursor(docs, limit, "last_activity_at")
        return Page(items, resume)

    async def contact(self, tenant_id: str, customer: str) -> Document | None:
        """The contacts projection's copy of a customer (`customer` as `customer_of` gives it)."""
        return await self._c.contacts.find_one({"_id": key(tenant_id, customer)})

    # --- who a customer is ----------------------------------------------------------------------------------
    def _known(self, tenant_id: str) -> Callable[[str], Awaitable[bool]]:
        """Whether something is kept under this id: chats and contacts made before links were kept are found so."""

        async def known(identity: str) -> bool:
            chat_keys = [
                key(tenant_id, domain.chat_id_for(tenant_id, phone_number_id, identity))
                for phone_number_id in self._numbers(tenant_id)
            ]
            if chat_keys and await self._c.chats.find_one({"_id": {"$in": chat_keys}}, {"_id": 1}):
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
    async def open_by_phone(
        self, tenant_id: str, phone_number_id: str, customer: str, phone: PhoneNumber, opened_by: str
    ) -> tuple[Document, bool]:
        """An agent starts a chat with `customer` (`customer_for_phone`): returns (chat, created); a new one
        announces chat.opened in its outbox (the unique `_id` decides who creates it)."""
        chat_id = domain.chat_id_for(tenant_id, phone_number_id, customer)
        chat_key = key(tenant_id, chat_id)
        existing = await self._read(chat_key)
        if existing is not None:
            return existing, False
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
        new = await self._new_chat(tenant_id, chat_id, phone_number_id, wa_id, None, user_id, customer)
        try:
            await self._c.chats.insert_one(new | {"outbox": [outbox_entry(event)]})
        except DuplicateKeyError:
            return await self._existing(chat_key, chat_id), False
        self._parked("chats", chat_key)
        await self._after_create(tenant_id, chat_key, customer, new["contact_version"])
        return await self.get(tenant_id, chat_id), True

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
        """A chat about to be created, showing the contact the projection holds (`_after_create` looks again once
        it is stored, so a contact change that lands meanwhile is never missed). It stores both of the ids."""
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
            "last_message_rev": 0,
            "unread_count": 0,
            "has_unread": False,
            "manual_unread": False,
            "manual_unread_ids": [],
            "last_inbound_wamid": None,
            "last_inbound_at": None,
            "window_opened_at": None,
            "window_expires_at": None,
            "window_state": "closed",
            "applied": [],
            "version": 0,
            "outbox": [],
        }

    async def _after_create(self, tenant_id: str, chat_key: str, customer: str, contact_version: int) -> None:
        """A contact change stores the projection, then updates the chats that exist; a new chat is stored, then
        reads the projection again: one of the two always sees the other."""
        contact = await self.contact(tenant_id, customer)
        if contact is not None and contact["version"] > contact_version:
            await self._set_contact(chat_key, contact["view"], contact["version"])

    async def _set_contact(self, chat_key: str, view: Document, version: int) -> None:
        await self._c.chats.update_one(
            {"_id": chat_key, "contact_version": {"$lt": version}},
            {"$set": {"contact": view, "contact_version": version}, "$inc": {"version": 1}},
        )

    # --- the contacts projection ---------------------------------------------------------------------------
    async def apply_contact(self, tenant_id: str, snapshot: ContactSnapshot) -> None:
        """Keeps the highest version; chats of that customer get the same copy under the same rule.

        Either order of "chat created" and "contact changed" ends with the chat showing the newest contact
        (see `_after_create`). Both writes are conditional on the version being newer, so a redelivered or
        out-of-order snapshot changes nothing.
        """
        view = contact_view(snapshot)
        customer = await self.customer_of(tenant_id, snapshot.wa_id, snapshot.user_id)
        contact_key = key(tenant_id, customer)
        with contextlib.suppress(DuplicateKeyError):  # the projection holds this version or a newer one already
            await self._c.contacts.update_one(
                {"_id": contact_key, "version": {"$lt": snapshot.version}},
                {
                    "$set": {"version": snapshot.version, "view": view},
                    "$setOnInsert": {"tenant_id": tenant_id, "wa_id": snapshot.wa_id, "user_id": snapshot.user_id},
                },
                upsert=True,
            )
        for phone_number_id in self._numbers(tenant_id):
            chat_id = domain.chat_id_for(tenant_id, phone_number_id, customer)
            await self._set_contact(key(tenant_id, chat_id), view, snapshot.version)

    # --- read state --------------------------------------------------------------------------------------------
    async def mark_read(self, tenant_id: str, chat_id: str, read_by: str) -> Document:
        """Zero unread and announce chat.read with the newest inbound wamid (outbound sends the read receipt).

        Conditional on the chat's version, so an inbound message counted at the same moment lands before (and is
        read) or after (and is unread), never lost; a chat with nothing unread announces nothing.
        """
        chat_key = key(tenant_id, chat_id)
        for _ in range(ATTEMPTS):
            chat = await self._existing(chat_key, chat_id)
            if chat["unread_count"] == 0 and not chat.get("manual_unread"):
                return await self.get(tenant_id, chat_id)
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
                "has_unread": False,
                "manual_unread": False,
                "manual_unread_ids": [],
                "read_at": domain.millis(self._clock()),
            }
            update = {"$set": cleared, "$push": {"outbox": outbox_entry(event)}, "$inc": {"version": 1}}
            if (await self._c.chats.update_one(unchanged(chat), update)).modified_count:
                break
        else:
            raise ChatConflict(chat_id)
        self._parked("chats", chat_key)
        marked = [key(tenant_id, message_id) for message_id in chat.get("manual_unread_ids", [])]
        if marked:
            await self._c.messages.update_many({"_id": {"$in": marked}}, {"$set": {"manual_unread": False}})
        return await self.get(tenant_id, chat_id)

    async def unread_chat_ids(self, tenant_id: str) -> list[str]:
        docs = self._c.chats.find({"tenant_id": tenant_id, "has_unread": True}, {"chat_id": 1})
        return [doc["chat_id"] async for doc in docs]

    async def mark_unread(self, tenant_id: str, chat_id: str, message_id: str, marked_by: str) -> Document:
        """At least one unread, so the chat stays unread until someone reads it; announces chat.unread."""
        chat_key = key(tenant_id, chat_id)
        for _ in range(ATTEMPTS):
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
            sets = {"unread_count": count, "has_unread": True, "manual_unread": True, "manual_unread_ids": marked}
            update = {"$set": sets, "$push": {"outbox": outbox_entry(event)}, "$inc": {"version": 1}}
            if (await self._c.chats.update_one(unchanged(chat), update)).modified_count:
                break
        else:
            raise ChatConflict(chat_id)
        self._parked("chats", chat_key)
        return await self.get(tenant_id, chat_id)


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]
