"""Messages in MongoDB: inbound messages, sending, delivery statuses (orphans included), the timeline, notes.

Same rules as repository.py: documents are read and written by `_id` alone, each write under its document's
lock. On FerretDB v1.24 as released even a lookup by `_id` walked the collection (~20 ms at 6k messages, growing
with it; our build fixes that and `$in` on `_id`, see deploy/local/ferretdb/patch.sh), so the hot path only
*inserts* into the growing collections, and what must be looked up there is kept in memory (`TimelineIndex`: each
chat's timeline entries, reactions and every wamid), rebuilt from one scan at start. A timeline page then reads
its documents with a single `$in` query on `_id`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from pymongo import DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError
from waflow_common.events.conversation import NoteAdded, NoteAddedEvent
from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import MessageReceived, MessageStatus
from waflow_common.events.outbound import (
    OutgoingMessage,
    SendAccepted,
    SendRejected,
    SendRequested,
    SendRequestedEvent,
)
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.repository import (
    APPLIED_KEEP,
    Cause,
    ChatRepository,
    Collections,
    Document,
    Page,
    Parked,
    key,
    next_cursor,
    page_filter,
)

NOT_SHOWN = {"outbox": 0, "request_hash": 0}
DUPLICATE_KEY = 11000


class MessageNotFound(Exception):
    pass


def request_hash(message: OutgoingMessage, reply_to_wamid: str | None) -> str:
    """Fingerprint of a send request: a reused Idempotency-Key with a different message is refused."""
    canonical = json.dumps([message.model_dump(mode="json"), reply_to_wamid], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _report(status: MessageStatus) -> Document:
    report: Document = {"status": status.status, "at": domain.millis(status.timestamp)}
    if status.errors:
        report["errors"] = [e.model_dump(mode="json", exclude_none=True) for e in status.errors]
    if status.pricing is not None:
        report["pricing"] = status.pricing.model_dump(mode="json", exclude_none=True)
    if status.conversation is not None:
        report["conversation"] = status.conversation
    return report


def _same_report(a: Document, b: Document) -> bool:
    return bool(a["status"] == b["status"] and a["at"] == b["at"])


def _visible_state(message: Document, reports: list[Document]) -> Document:
    """status, status_at and failure as they follow from the lifecycle and every report (domain rule)."""
    lifecycle = domain.DeliveryState(message["lifecycle_status"], message.get("lifecycle_at"))
    state = domain.delivery_state(lifecycle, [domain.StatusReport(r["status"], r["at"]) for r in reports])
    failure: Document | None = None
    if state.status == "failed":
        meta_failure = [r for r in reports if r["status"] == "failed" and r["at"] == state.at]
        if meta_failure:
            error = (meta_failure[0].get("errors") or [{}])[0]
            failure = {
                "reason": "window_closed" if error.get("code") == 131047 else "meta_error",
                "message": error.get("message") or error.get("title") or "WhatsApp reported the message failed",
                "code": error.get("code"),
                "title": error.get("title"),
            }
        else:
            failure = message.get("rejection")
    sets: Document = {"status": state.status, "status_at": state.at, "failure": failure}
    for field in ("pricing", "conversation"):
        carried = [r[field] for r in sorted(reports, key=lambda r: r["at"]) if field in r]
        if carried:
            sets[field] = carried[-1]
    return sets


Entry = tuple[datetime, str, str]  # (at, document key, "message" | "note")


class TimelineIndex:
    """Per chat, what its timeline shows, oldest first; rebuilt at start from one scan of messages and notes."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Entry]] = defaultdict(list)
        # chat key -> wamid reacted to -> (at, reaction message key); the latest reaction wins
        self._reactions: dict[str, dict[str, tuple[datetime, str]]] = defaultdict(dict)
        # key(tenant, wamid) -> message key
        self._wamids: dict[str, str] = {}

    def know_wamid(self, tenant_id: str, wamid: str, message_key: str) -> None:
        self._wamids[key(tenant_id, wamid)] = message_key

    def message_for(self, tenant_id: str, wamid: str) -> str | None:
        return self._wamids.get(key(tenant_id, wamid))

    def add(self, chat_key: str, at: datetime, doc_key: str, kind: str) -> None:
        entries = self._entries[chat_key]
        entry = (at, doc_key, kind)
        position = bisect.bisect_left(entries, entry)
        if position == len(entries) or entries[position] != entry:
            entries.insert(position, entry)

    def remove(self, chat_key: str, doc_key: str) -> None:
        self._entries[chat_key] = [e for e in self._entries[chat_key] if e[1] != doc_key]

    def react(self, chat_key: str, target_wamid: str, at: datetime, reaction_key: str) -> None:
        current = self._reactions[chat_key].get(target_wamid)
        if current is None or (at, reaction_key) > current:
            self._reactions[chat_key][target_wamid] = (at, reaction_key)

    def reaction(self, chat_key: str, wamid: str) -> str | None:
        found = self._reactions.get(chat_key, {}).get(wamid)
        return found[1] if found else None

    def page(self, chat_key: str, cursor: str | None, limit: int) -> tuple[list[Entry], str | None]:
        """Newest first, strictly older than the cursor."""
        entries = self._entries.get(chat_key, [])
        end = len(entries)
        if cursor is not None:
            at, doc_key = domain.decode_cursor(cursor)
            end = bisect.bisect_left(entries, (at, doc_key, ""))
        start = max(0, end - limit)
        chosen = list(reversed(entries[start:end]))
        more = start > 0
        return chosen, domain.encode_cursor(chosen[-1][0], chosen[-1][1]) if more and chosen else None

    def load(self, chat_key: str, doc: Document, kind: str) -> None:
        if kind == "message" and not str(doc["wamid"]).startswith("pending:"):
            self.know_wamid(doc["tenant_id"], doc["wamid"], doc["_id"])
        if kind == "note":
            self.add(chat_key, doc["at"], doc["_id"], "note")
        elif doc.get("type") == "reaction":
            target = (doc.get("content") or {}).get("message_id")
            if target:
                self.react(chat_key, target, doc["at"], doc["_id"])
        elif not doc.get("hidden"):
            self.add(chat_key, doc["at"], doc["_id"], "message")


class MessageRepository:
    def __init__(
        self, collections: Collections, chats: ChatRepository, clock: Clock, parked: Parked, index: TimelineIndex
    ) -> None:
        self._c = collections
        self._chats = chats
        self._clock = clock
        self._parked = parked
        self._index = index

    async def load_index(self) -> None:
        """Reads every message and note once (at start) into the timeline index."""
        fields = {"chat_id": 1, "tenant_id": 1, "at": 1, "type": 1, "hidden": 1, "content": 1, "wamid": 1}
        async for doc in self._c.messages.find({}, fields):
            self._index.load(key(doc["tenant_id"], doc["chat_id"]), doc, "message")
        async for doc in self._c.notes.find({}, {"chat_id": 1, "tenant_id": 1, "at": 1}):
            self._index.load(key(doc["tenant_id"], doc["chat_id"]), doc, "note")

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
        for m, cause in received:
            if self._index.message_for(tenant_id, m.wamid) is not None:
                continue  # stored and counted before
            customer = await self._chats.customer_of(tenant_id, m.wa_id, m.user_id)
            chat_id = domain.chat_id_for(tenant_id, m.phone_number_id, customer)  # created with its first message
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

    # --- statuses ------------------------------------------------------------------------------------------------
    async def _by_wamid(self, tenant_id: str, wamid: str) -> str | None:
        return self._index.message_for(tenant_id, wamid)

    async def apply_status(self, tenant_id: str, status: MessageStatus) -> None:
        """Forward-only (see domain.delivery_state); a status for an unknown wamid waits as an orphan."""
        message_key = await self._by_wamid(tenant_id, status.wamid)
        if message_key is not None:
            await self._merge_reports(message_key, [_report(status)])
            return
        orphan_key = key(tenant_id, status.wamid)
        async with self._c.hold("orphan_statuses", orphan_key):
            held = await self._c.orphan_statuses.find_one({"_id": orphan_key})
            if held is None:
                await self._c.orphan_statuses.insert_one({"_id": orphan_key, "reports": [_report(status)]})
            else:
                await self._c.orphan_statuses.update_one({"_id": orphan_key}, {"$push": {"reports": _report(status)}})
        # send.accepted may have stored the wamid meanwhile (another topic, another worker): look again, so one
        # of the two always sees the other.
        if await self._by_wamid(tenant_id, status.wamid) is not None:
            await self._adopt_orphans(tenant_id, status.wamid)

    async def _adopt_orphans(self, tenant_id: str, wamid: str) -> None:
        message_key = await self._by_wamid(tenant_id, wamid)
        orphan_key = key(tenant_id, wamid)
        if message_key is None:
            return
        async with self._c.hold("orphan_statuses", orphan_key):
            held = await self._c.orphan_statuses.find_one({"_id": orphan_key})
            if held is None:
                return
            await self._merge_reports(message_key, held["reports"])
            await self._c.orphan_statuses.delete_one({"_id": orphan_key})

    async def _merge_reports(self, message_key: str, new_reports: list[Document]) -> None:
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key})
            if message is None:
                raise MessageNotFound(message_key)
            reports: list[Document] = list(message.get("reports", []))
            added = False
            for report in new_reports:
                if not any(_same_report(report, r) for r in reports):
                    reports.append(report)
                    added = True
            if not added:
                return
            reports.sort(key=lambda r: (r["at"], domain.STATUS_RANK.get(r["status"], 9)))
            await self._c.messages.update_one(
                {"_id": message_key}, {"$set": {"reports": reports, **_visible_state(message, reports)}}
            )

    async def accept(self, tenant_id: str, accepted: SendAccepted) -> None:
        """Outbound sent it: the wamid arrives, and any status that came first is applied now."""
        message_id = domain.outbound_message_id(tenant_id, accepted.request_id)
        message_key = key(tenant_id, message_id)
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key})
            if message is None:
                return  # not a request of ours
            if message["lifecycle_status"] == "pending":
                now = self._clock()
                changed = message | {"lifecycle_status": "accepted", "lifecycle_at": now}
                await self._c.messages.update_one(
                    {"_id": message_key},
                    {
                        "$set": {
                            "wamid": accepted.wamid,
                            "lifecycle_status": "accepted",
                            "lifecycle_at": now,
                            **_visible_state(changed, message.get("reports", [])),
                        }
                    },
                )
        self._index.know_wamid(tenant_id, accepted.wamid, message_key)
        await self._adopt_orphans(tenant_id, accepted.wamid)

    async def reject(self, tenant_id: str, rejected: SendRejected) -> None:
        message_key = key(tenant_id, domain.outbound_message_id(tenant_id, rejected.request_id))
        rejection: Document = {"reason": rejected.reason, "message": rejected.message}
        if rejected.meta_error is not None:
            rejection |= {"code": rejected.meta_error.code, "title": rejected.meta_error.title}
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key})
            if message is None or message["lifecycle_status"] != "pending":
                return
            now = self._clock()
            await self._c.messages.update_one(
                {"_id": message_key},
                {
                    "$set": {
                        "lifecycle_status": "failed",
                        "lifecycle_at": now,
                        "rejection": rejection,
                        "status": "failed",
                        "status_at": now,
                        "failure": rejection,
                    }
                },
            )

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
                quoted_key = await self._by_wamid(tenant_id, quoted_wamid)
                q = await self._c.messages.find_one({"_id": quoted_key}) if quoted_key else None
                m["reply_to"] = {
                    "wamid": quoted_wamid,
                    "message_id": q["message_id"] if q else None,
                    "direction": q["direction"] if q else None,
                    "type": q["type"] if q else None,
                    "preview": domain.preview(q["content"]) if q and not q.get("hidden") else None,
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
        self._index.remove(key(tenant_id, chat_id), message_key)

    async def mark_unread(self, tenant_id: str, chat_id: str, message_id: str) -> None:
        message_key = key(tenant_id, message_id)
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key}, {"chat_id": 1, "hidden": 1})
            if message is None or message["chat_id"] != chat_id or message["hidden"]:
                raise MessageNotFound(message_id)
            await self._c.messages.update_one({"_id": message_key}, {"$set": {"manual_unread": True}})


class NoteRepository:
    """Notes are append-only: there is no update or delete here, by design."""

    def __init__(self, collections: Collections, clock: Clock, parked: Parked, index: TimelineIndex) -> None:
        self._c = collections
        self._clock = clock
        self._parked = parked
        self._index = index

    async def add(self, chat: Document, note_id: str, author: str, text: str, correlation_id: str | None) -> Document:
        now = domain.millis(self._clock())
        event = NoteAddedEvent.new(
            tenant_id=chat["tenant_id"],
            payload=NoteAdded(
                chat_id=chat["chat_id"],
                phone_number_id=chat["phone_number_id"],
                wa_id=chat["wa_id"],
                user_id=chat.get("user_id"),
                note_id=note_id,
                author=author,
                text=text,
                created_at=now,
            ),
            correlation_id=correlation_id,
            clock=lambda: now,
        )
        doc: Document = {
            "_id": key(chat["tenant_id"], note_id),
            "note_id": note_id,
            "tenant_id": chat["tenant_id"],
            "chat_id": chat["chat_id"],
            "author": author,
            "text": text,
            "at": now,
            "outbox": [outbox_entry(event)],
        }
        await self._c.notes.insert_one(doc)
        self._parked("notes", doc["_id"])
        self._index.load(chat["_id"], doc, "note")
        return doc

    async def get(self, tenant_id: str, chat_id: str, note_id: str) -> Document | None:
        note = await self._c.notes.find_one({"_id": key(tenant_id, note_id)}, {"outbox": 0})
        return note if note is not None and note["chat_id"] == chat_id else None

    async def page(
        self,
        tenant_id: str,
        chat_id: str,
        *,
        text: str | None,
        author: str | None,
        since: datetime | None,
        until: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        query: Document = {"tenant_id": tenant_id, "chat_id": chat_id}
        if text:
            query["text"] = {"$regex": re.escape(text), "$options": "i"}
        if author:
            query["author"] = author
        if since or until:
            window: Document = {}
            if since:
                window["$gte"] = since
            if until:
                window["$lt"] = until
            query["at"] = window
        docs = (
            await self._c.notes.find(page_filter(query, cursor), {"outbox": 0})
            .sort([("at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
            .to_list()
        )
        items, cursor_out = next_cursor(docs, limit)
        return Page(items, cursor_out)
