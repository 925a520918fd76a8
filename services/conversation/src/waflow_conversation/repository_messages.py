"""Messages in MongoDB: inbound messages, sending, the timeline, the agent's own view (delete for me, unread).
Delivery statuses are in repository_statuses.py, a customer's edits and revokes in repository_amendments.py.

An inbound message's `_id` is derived from its wamid and `(tenant_id, wamid)` is unique: storing it is the
idempotency of inbound messages (a duplicate webhook, a redelivered record or a second instance stores nothing
more). A timeline page is two queries on `(tenant_id, chat_id, at, _id)` indexes (messages and notes), merged;
reactions and quotes are found by their own indexes.
"""

from __future__ import annotations

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
from waflow_conversation.repository_base import NEWEST_FIRST, next_cursor, page_filter
from waflow_conversation.repository_statuses import StatusRepository

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
    def __init__(self, collections: Collections, chats: ChatRepository, clock: Clock, parked: Parked) -> None:
        self._c = collections
        self._chats = chats
        self._clock = clock
        self._parked = parked
        self.amendments = AmendmentRepository(collections, chats)
        self.statuses = StatusRepository(collections, clock)

    # --- inbound -------------------------------------------------------------------------------------------------
    async def record_inbound(self, tenant_id: str, received: Sequence[tuple[MessageReceived, Cause | None]]) -> None:
        """Stores each message once and applies it to its chat once.

        The messages first, in one insert (`counted: False`; a duplicate is refused by its unique `_id`), so a
        chat never shows a message that its timeline lacks. Then the messages not counted yet are counted on their
        chats (one conditional update for up to APPLIED_KEEP messages of a chat, the updates of all the chats in
        one bulk write), then marked counted. A record redelivered after a crash between the two finds its id in
        the chat's `applied` and is only marked; a duplicate long after finds the message counted and changes
        nothing. A chat with more messages than that is written in rounds, each marked before the next.
        """
        by_chat: dict[str, list[tuple[str, MessageReceived, Cause | None, Document]]] = {}
        amendments = [m for m, _ in received if amends_another(m.content.type)]
        for m, cause in received:
            if amends_another(m.content.type):
                continue  # an edit or revoke changes its message (below)
            chat_id = await _chat_id(self._chats, tenant_id, m)  # created with its first message
            message_id = domain.inbound_message_id(tenant_id, m.wamid)
            queued = by_chat.setdefault(chat_id, [])
            if all(item[0] != message_id for item in queued):
                queued.append((message_id, m, cause, self._inbound_doc(tenant_id, chat_id, message_id, m)))
        docs = [doc for items in by_chat.values() for *_, doc in items]
        await self._store(docs)
        uncounted = await self._uncounted([doc["_id"] for doc in docs])
        rounds: list[list[tuple[str, list[tuple[str, MessageReceived, Cause | None]]]]] = []
        for chat_id, items in by_chat.items():
            todo = [(i, m, c) for i, m, c, doc in items if doc["_id"] in uncounted]
            for n, start in enumerate(range(0, len(todo), APPLIED_KEEP)):
                if n == len(rounds):
                    rounds.append([])
                rounds[n].append((chat_id, todo[start : start + APPLIED_KEEP]))
        for chunks in rounds:
            await self._chats.apply_inbound(tenant_id, chunks)
            counted = [key(tenant_id, message_id) for _, chunk in chunks for message_id, _, _ in chunk]
            await self._c.messages.update_many({"_id": {"$in": counted}}, {"$set": {"counted": True}})
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

    async def _uncounted(self, message_keys: list[str]) -> set[str]:
        if not message_keys:
            return set()
        found = self._c.messages.find({"_id": {"$in": message_keys}, "counted": False}, {"_id": 1})
        return {doc["_id"] async for doc in found}

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
            "counted": False,
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
            "report_keys": [],
            "status_version": 0,
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
        chat = {"tenant_id": tenant_id, "chat_id": chat_id}
        shown = chat | {"hidden": False, "type": {"$nin": sorted(domain.NOT_OWN_ENTRY)}}
        found: list[Document] = []
        for kind, collection, query in (("message", self._c.messages, shown), ("note", self._c.notes, chat)):
            docs = collection.find(page_filter(query, cursor), NOT_SHOWN).sort(NEWEST_FIRST).limit(limit + 1)
            found += [doc | {"kind": kind} async for doc in docs]
        found.sort(key=lambda d: (d["at"], d["_id"]), reverse=True)
        items, cursor_out = next_cursor(found, limit)
        messages = await self._decorate(tenant_id, [i for i in items if i["kind"] == "message"])
        by_key = {d["_id"]: d for d in messages}
        return Page([by_key.get(i["_id"], i) for i in items], cursor_out)

    async def _decorate(self, tenant_id: str, messages: list[Document]) -> list[Document]:
        """Each message with the latest reaction to it (the customer's, by wamid) and the message it quotes."""
        wamids = [m["wamid"] for m in messages]
        reactions: dict[str, Document] = {}
        if wamids:
            chats = sorted({m["chat_id"] for m in messages})
            query = {"tenant_id": tenant_id, "content.message_id": {"$in": wamids}, "chat_id": {"$in": chats}}
            async for r in self._c.messages.find(query | {"type": "reaction"}, {"content": 1, "at": 1}):
                target = r["content"]["message_id"]
                best = reactions.get(target)
                if best is None or (r["at"], r["_id"]) > (best["at"], best["_id"]):
                    reactions[target] = r
        quoted_wamids = sorted({q for m in messages if (q := (m.get("context") or {}).get("quoted_wamid"))})
        quoted: dict[str, Document] = {}
        if quoted_wamids:
            query = {"tenant_id": tenant_id, "wamid": {"$in": quoted_wamids}}
            quoted = {q["wamid"]: q async for q in self._c.messages.find(query, NOT_SHOWN)}
        out = []
        for message in messages:
            m = dict(message)
            m["reactions"] = []
            reaction = reactions.get(m["wamid"])
            if reaction is not None:
                emoji = (reaction.get("content") or {}).get("emoji")
                if emoji:
                    m["reactions"] = [{"emoji": emoji, "at": reaction["at"], "by": "customer"}]
            quoted_wamid = (m.get("context") or {}).get("quoted_wamid")
            if quoted_wamid:
                q = quoted.get(quoted_wamid)
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
        hidden = await self._c.messages.update_one(
            {"_id": message_key, "chat_id": chat_id, "hidden": False},
            {"$set": {"hidden": True, "hidden_at": self._clock()}},
        )
        if not hidden.matched_count and not await self._c.messages.find_one(
            {"_id": message_key, "chat_id": chat_id}, {"_id": 1}
        ):
            raise MessageNotFound(message_id)
        # The chat list no longer shows it either: its last message is then the newest one still shown. Also on
        # a repeated call, which mends a chat left as it was by a process stopped between the two writes. If the
        # one shown instead was hidden meanwhile (its own hide found the chat not showing it yet), on to the next.
        for _ in range(10):
            newest = await self._newest_shown(tenant_id, chat_id)
            shown = domain.last_message_view(newest) if newest else None
            rev = int(newest.get("amend_version", 0)) if newest else 0
            if not await self._chats.replace_last_message(tenant_id, chat_id, message_id, shown, rev):
                return
            if newest is None or not await self._c.messages.find_one({"_id": newest["_id"], "hidden": True}):
                return
            message_id = newest["message_id"]

    async def _newest_shown(self, tenant_id: str, chat_id: str) -> Document | None:
        query = {"tenant_id": tenant_id, "chat_id": chat_id, "hidden": False}
        query["type"] = {"$nin": sorted(domain.NOT_OWN_ENTRY)}
        return await self._c.messages.find_one(query, NOT_SHOWN, sort=NEWEST_FIRST)

    async def mark_unread(self, tenant_id: str, chat_id: str, message_id: str) -> None:
        marked = await self._c.messages.update_one(
            {"_id": key(tenant_id, message_id), "chat_id": chat_id, "hidden": False},
            {"$set": {"manual_unread": True}},
        )
        if not marked.matched_count:
            raise MessageNotFound(message_id)
