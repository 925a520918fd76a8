"""Messages in MongoDB: inbound messages, sending, the timeline, the agent's own view (delete for me, unread).
Delivery statuses are in repository_statuses.py, a customer's edits and revokes in repository_amendments.py.

Same rules as repository.py: documents are read and written by `_id` alone, each write under its document's
lock. On FerretDB v1.24 as released even a lookup by `_id` walked the collection (~20 ms at 6k messages, growing
with it; our build fixes that and `$in` on `_id`, see deploy/local/ferretdb/patch.sh), so the hot path only
*inserts* into the growing collections, and what must be looked up there is kept in memory (`TimelineIndex`: each
chat's timeline entries, reactions and every wamid), rebuilt from one scan at start. A timeline page then reads
its documents with a single `$in` query on `_id`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence

from pymongo.errors import BulkWriteError, DuplicateKeyError
from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import MessageReceived
from waflow_common.events.outbound import (
    OutgoingMessage,
    SendRequested,
    SendRequestedEvent,
)
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.domain_amendments import amends_another
from waflow_conversation.repository import (
    APPLIED_KEEP,
    Cause,
    ChatRepository,
    Collections,
    Document,
    MessageNotFound,
    Page,
    Parked,
    key,
)
from waflow_conversation.repository_amendments import AmendmentRepository
from waflow_conversation.repository_statuses import StatusRepository
from waflow_conversation.timeline_index import TimelineIndex

NOT_SHOWN = {"outbox": 0, "request_hash": 0}
DUPLICATE_KEY = 11000


def request_hash(message: OutgoingMessage, reply_to_wamid: str | None) -> str:
    """Fingerprint of a send request: a reused Idempotency-Key with a different message is refused."""
    canonical = json.dumps([message.model_dump(mode="json"), reply_to_wamid], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _chat_id(chats: ChatRepository, tenant_id: str, m: MessageReceived) -> str:
    """The chat of the message's customer on its number: kept under the customer's key (see customer_of)."""
    customer = await chats.customer_of(tenant_id, m.wa_id, m.user_id)
    return domain.chat_id_for(tenant_id, m.phone_number_id, customer)


class MessageRepository:
    def __init__(
        self, collections: Collections, chats: ChatRepository, clock: Clock, parked: Parked, index: TimelineIndex
    ) -> None:
        self._c = collections
        self._chats = chats
        self._clock = clock
        self._parked = parked
        self._index = index
        self.amendments = AmendmentRepository(collections, chats, index)
        self.statuses = StatusRepository(collections, clock, index)

    async def load_index(self) -> None:
        """Reads every message and note once (at start) into the timeline index."""
        fields = {"chat_id": 1, "tenant_id": 1, "at": 1, "type": 1, "hidden": 1, "content": 1, "wamid": 1}
        async for doc in self._c.messages.find({}, fields):
            self._index.load(key(doc["tenant_id"], doc["chat_id"]), doc, "message")
        async for doc in self._c.notes.find({}, {"chat_id": 1, "tenant_id": 1, "at": 1}):
            self._index.load(key(doc["tenant_id"], doc["chat_id"]), doc, "note")
        await self.amendments.load()

    # --- inbound -------------------------------------------------------------------------------------------------
    async def record_inbound(self, tenant_id: str, received: Sequence[tuple[MessageReceived, Cause | None]]) -> None:
        """Applies each message to its chat once and stores it once (its `_id` is derived from the wamid).

        Messages that arrive together are written together: one chat update for up to APPLIED_KEEP messages of a
        chat, the updates of all the chats in one bulk write, then one insert for all the messages. The chats
        first, then the insert: a chat remembers the last ids it counted, so a record redelivered after a crash
        between the two (Kafka redelivers the batch, in partition order, before anything newer) finds its id
        there and only inserts; a duplicate webhook long after finds the message already stored and changes
        nothing. A chat with more messages than that is written in rounds, each after the messages of the round
        before are stored.
        """
        by_chat: dict[str, list[tuple[str, MessageReceived, Cause | None, Document]]] = {}
        amendments = [m for m, _ in received if amends_another(m.content.type)]
        for m, cause in received:
            if amends_another(m.content.type) or self._index.message_for(tenant_id, m.wamid) is not None:
                continue  # an edit or revoke changes its message (below); or stored and counted before
            chat_id = await _chat_id(self._chats, tenant_id, m)  # created with its first message
            message_id = domain.inbound_message_id(tenant_id, m.wamid)
            queued = by_chat.setdefault(chat_id, [])
            if all(item[0] != message_id for item in queued):
                queued.append((message_id, m, cause, self._inbound_doc(tenant_id, chat_id, message_id, m)))
        rounds: list[list[tuple[str, list[tuple[str, MessageReceived, Cause | None, Document]]]]] = []
        for chat_id, items in by_chat.items():
            for n, start in enumerate(range(0, len(items), APPLIED_KEEP)):
                if n == len(rounds):
                    rounds.append([])
                rounds[n].append((chat_id, items[start : start + APPLIED_KEEP]))
        for chunks in rounds:
            await self._chats.apply_inbound(
                tenant_id,
                [(chat_id, [(i, m, c) for i, m, c, _ in chunk]) for chat_id, chunk in chunks],
                then=functools.partial(self._store, [doc for _, chunk in chunks for *_, doc in chunk]),
            )
        # Once the messages are stored (and those of earlier records, which may have been stored by a process that
        # stopped before this step): edits and revokes that came first, then the ones that came now.
        await self.amendments.adopt(tenant_id, [m.wamid for m, _ in received])
        for m in amendments:
            await self.amendments.apply(tenant_id, await _chat_id(self._chats, tenant_id, m), m)

    async def _store(self, docs: list[Document]) -> None:
        if not docs:
            return
        try:
            await self._c.messages.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise
        for doc in docs:
            self._index.load(key(doc["tenant_id"], doc["chat_id"]), doc, "message")

    def _inbound_doc(self, tenant_id: str, chat_id: str, message_id: str, m: MessageReceived) -> Document:
        return {
            "_id": key(tenant_id, message_id),
            "message_id": message_id,
            "tenant_id": tenant_id,
            "chat_id": chat_id,
            "wamid": m.wamid,
            "direction": "in",
            "type": m.content.type,
            "content": m.content.model_dump(mode="json"),
            "context": m.context.model_dump(mode="json", exclude_none=True) if m.context else None,
            "referral": m.referral.model_dump(mode="json", exclude_none=True) if m.referral else None,
            "errors": [e.model_dump(mode="json", exclude_none=True) for e in m.errors],
            "at": domain.millis(m.timestamp),
            "received_at": self._clock(),
            "hidden": False,
            "manual_unread": False,
        }

    # --- sending -------------------------------------------------------------------------------------------------
    async def find_request(self, tenant_id: str, request_id: str) -> Document | None:
        message_id = domain.outbound_message_id(tenant_id, request_id)
        return await self._c.messages.find_one({"_id": key(tenant_id, message_id)})

    def same_request(self, existing: Document, message: OutgoingMessage, reply_to_wamid: str | None) -> bool:
        return bool(existing.get("request_hash") == request_hash(message, reply_to_wamid))

    async def store_send(
        self,
        chat: Document,
        *,
        request_id: str,
        message: OutgoingMessage,
        reply_to_wamid: str | None,
        requested_by: str,
        correlation_id: str | None,
    ) -> Document:
        """Stores the pending message and its send.requested in one insert; a retried request returns the first.

        Raises domain.IdempotencyKeyReused when the same key comes back with a different message.
        """
        tenant_id: str = chat["tenant_id"]
        message_id = domain.outbound_message_id(tenant_id, request_id)
        message_key = key(tenant_id, message_id)
        fingerprint = request_hash(message, reply_to_wamid)
        now = domain.millis(self._clock())
        event = SendRequestedEvent.new(
            tenant_id=tenant_id,
            payload=SendRequested(
                request_id=request_id,
                chat_id=chat["chat_id"],
                phone_number_id=chat["phone_number_id"],
                wa_id=chat["wa_id"],
                user_id=chat.get("user_id"),
                message=message,
                reply_to=reply_to_wamid,
                requested_by=requested_by,
            ),
            correlation_id=correlation_id,
            clock=lambda: now,
        )
        content = message.model_dump(mode="json")
        if content["type"] == "text":
            content.pop("preview_url", None)
        doc: Document = {
            "_id": message_key,
            "message_id": message_id,
            "tenant_id": tenant_id,
            "chat_id": chat["chat_id"],
            "wamid": domain.pending_wamid(message_id),
            "direction": "out",
            "type": content["type"],
            "content": content,
            "context": {"quoted_wamid": reply_to_wamid} if reply_to_wamid else None,
            "at": now,
            "hidden": False,
            "manual_unread": False,
            "request_id": request_id,
            "request_hash": fingerprint,
            "requested_by": requested_by,
            "lifecycle_status": "pending",
            "lifecycle_at": now,
            "status": "pending",
            "status_at": now,
            "failure": None,
            "reports": [],
            "outbox": [outbox_entry(event)],
        }
        try:
            await self._c.messages.insert_one(doc)
        except DuplicateKeyError:
            existing = await self._c.messages.find_one({"_id": message_key})
            if existing is None:
                raise
            if existing.get("request_hash") != fingerprint:
                raise domain.IdempotencyKeyReused(
                    "this Idempotency-Key was already used for a different message"
                ) from None
            return existing
        self._parked("messages", message_key)
        self._index.load(chat["_id"], doc, "message")
        await self._chats.note_outbound(
            tenant_id,
            chat["chat_id"],
            {
                "message_id": message_id,
                "wamid": None,
                "direction": "out",
                "type": content["type"],
                "preview": domain.preview(content),
                "at": now,
            },
        )
        return doc

    # --- reading ---------------------------------------------------------------------------------------------------
    async def get(self, tenant_id: str, chat_id: str, message_id: str) -> Document:
        message = await self._c.messages.find_one({"_id": key(tenant_id, message_id)}, NOT_SHOWN)
        if message is None or message["chat_id"] != chat_id or message["hidden"]:
            raise MessageNotFound(message_id)
        return (await self._decorate(tenant_id, [message]))[0]

    async def timeline(self, tenant_id: str, chat_id: str, cursor: str | None, limit: int) -> Page:
        """Messages and notes of a chat, newest first; reactions ride on their message, replies carry the quote."""
        entries, cursor_out = self._index.page(key(tenant_id, chat_id), cursor, limit)
        found: dict[str, Document] = {}
        for kind, collection in (("message", self._c.messages), ("note", self._c.notes)):
            keys = [k for _, k, entry_kind in entries if entry_kind == kind]
            if keys:
                async for doc in collection.find({"_id": {"$in": keys}}, NOT_SHOWN):
                    found[doc["_id"]] = doc | {"kind": kind}
        items = [found[k] for _, k, _ in entries if k in found]
        messages = await self._decorate(tenant_id, [i for i in items if i["kind"] == "message"])
        by_key = {d["_id"]: d for d in messages}
        return Page([by_key.get(i["_id"], i) for i in items], cursor_out)

    async def _decorate(self, tenant_id: str, messages: list[Document]) -> list[Document]:
        out = []
        for message in messages:
            m = dict(message)
            chat_key = key(tenant_id, m["chat_id"])
            m["reactions"] = []
            reaction_key = self._index.reaction(chat_key, m["wamid"])
            if reaction_key:
                reaction = await self._c.messages.find_one({"_id": reaction_key}, {"content": 1, "at": 1})
                emoji = (reaction or {}).get("content", {}).get("emoji")
                if reaction and emoji:
                    m["reactions"] = [{"emoji": emoji, "at": reaction["at"], "by": "customer"}]
            quoted_wamid = (m.get("context") or {}).get("quoted_wamid")
            if quoted_wamid:
                quoted_key = self._index.message_for(tenant_id, quoted_wamid)
                q = await self._c.messages.find_one({"_id": quoted_key}) if quoted_key else None
                m["reply_to"] = {
                    "wamid": quoted_wamid,
                    "message_id": q["message_id"] if q else None,
                    "direction": q["direction"] if q else None,
                    "type": q["type"] if q else None,
                    "preview": domain.message_preview(q) if q and not q.get("hidden") else None,
                }
            out.append(m)
        return out

    async def resolve_reply(self, tenant_id: str, chat_id: str, message_id: str) -> str:
        """The wamid to quote for one of this chat's messages (it must have reached WhatsApp)."""
        message = await self._c.messages.find_one({"_id": key(tenant_id, message_id)})
        if message is None or message["chat_id"] != chat_id or str(message["wamid"]).startswith("pending:"):
            raise MessageNotFound(message_id)
        return str(message["wamid"])

    # --- the agent's own view ---------------------------------------------------------------------------------
    async def hide(self, tenant_id: str, chat_id: str, message_id: str) -> None:
        """Delete for me: gone from this tenant's timeline; the customer's copy is untouched. Idempotent."""
        message_key = key(tenant_id, message_id)
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key}, {"chat_id": 1, "hidden": 1})
            if message is None or message["chat_id"] != chat_id:
                raise MessageNotFound(message_id)
            if not message["hidden"]:
                await self._c.messages.update_one(
                    {"_id": message_key}, {"$set": {"hidden": True, "hidden_at": self._clock()}}
                )
        chat_key = key(tenant_id, chat_id)
        self._index.remove(chat_key, message_key)
        # The chat list no longer shows it either: its last message is then the newest one still shown. Also on
        # a repeated call, which mends a chat left as it was by a process stopped between the two writes.
        await self._chats.replace_last_message(
            tenant_id, chat_id, message_id, functools.partial(self._newest_shown, chat_key)
        )

    async def _newest_shown(self, chat_key: str) -> Document | None:
        newest = self._index.newest_message(chat_key)
        message = await self._c.messages.find_one({"_id": newest}, NOT_SHOWN) if newest else None
        return domain.last_message_view(message) if message else None

    async def mark_unread(self, tenant_id: str, chat_id: str, message_id: str) -> None:
        message_key = key(tenant_id, message_id)
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key}, {"chat_id": 1, "hidden": 1})
            if message is None or message["chat_id"] != chat_id or message["hidden"]:
                raise MessageNotFound(message_id)
            await self._c.messages.update_one({"_id": message_key}, {"$set": {"manual_unread": True}})
