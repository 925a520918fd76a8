"""Messages in MongoDB: inbound messages, sending, delivery statuses (orphans included), the timeline, notes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from datetime import datetime

from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError
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
    MAX_ATTEMPTS,
    Cause,
    ChatRepository,
    Collections,
    ConcurrentUpdate,
    Document,
    Page,
    Parked,
    next_cursor,
    page_filter,
)

HIDDEN_FROM_TIMELINE = {"outbox": 0, "request_hash": 0}


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
    for key in ("pricing", "conversation"):
        carried = [r[key] for r in sorted(reports, key=lambda r: r["at"]) if key in r]
        if carried:
            sets[key] = carried[-1]
    return sets


class MessageRepository:
    def __init__(self, collections: Collections, chats: ChatRepository, clock: Clock, parked: Parked) -> None:
        self._c = collections
        self._chats = chats
        self._clock = clock
        self._parked = parked

    # --- inbound -------------------------------------------------------------------------------------------------
    async def record_inbound(self, tenant_id: str, m: MessageReceived, cause: Cause | None = None) -> str:
        """Stores the message once (unique tenant_id+wamid) and applies it to its chat exactly once."""
        chat = await self._chats.ensure(tenant_id, m.phone_number_id, m.wa_id, profile_name=m.profile_name)
        message_id = domain.inbound_message_id(tenant_id, m.wamid)
        content = m.content.model_dump(mode="json")
        doc: Document = {
            "_id": message_id,
            "tenant_id": tenant_id,
            "chat_id": chat["_id"],
            "wamid": m.wamid,
            "direction": "in",
            "type": m.content.type,
            "content": content,
            "context": m.context.model_dump(mode="json", exclude_none=True) if m.context else None,
            "referral": m.referral.model_dump(mode="json", exclude_none=True) if m.referral else None,
            "errors": [e.model_dump(mode="json", exclude_none=True) for e in m.errors],
            "at": domain.millis(m.timestamp),
            "received_at": self._clock(),
            "hidden": False,
            "manual_unread": False,
            # Set once the chat counted it: a redelivery that finds it set has nothing left to do.
            "counted": False,
        }
        try:
            await self._c.messages.insert_one(doc)
        except DuplicateKeyError:
            existing = await self._c.messages.find_one({"tenant_id": tenant_id, "_id": message_id})
            if existing is not None and existing.get("counted"):
                return message_id
        await self._chats.apply_inbound(chat["_id"], tenant_id, message_id, m, cause)
        async with self._c.hold("messages", message_id):
            await self._c.messages.update_one({"tenant_id": tenant_id, "_id": message_id}, {"$set": {"counted": True}})
        return message_id

    # --- statuses ------------------------------------------------------------------------------------------------
    async def apply_status(self, tenant_id: str, status: MessageStatus, event_id: str) -> None:
        """Forward-only (see domain.delivery_state); a status for an unknown wamid waits as an orphan."""
        message = await self._c.messages.find_one({"tenant_id": tenant_id, "wamid": status.wamid})
        if message is None:
            orphan = {"_id": event_id, "tenant_id": tenant_id, "wamid": status.wamid, "report": _report(status)}
            with contextlib.suppress(DuplicateKeyError):
                await self._c.orphan_statuses.insert_one(orphan)
            # send.accepted may have stored the wamid meanwhile (another topic, another worker): look again, so
            # one of the two always sees the other.
            message = await self._c.messages.find_one({"tenant_id": tenant_id, "wamid": status.wamid})
            if message is not None:
                await self._adopt_orphans(tenant_id, status.wamid)
            return
        await self._merge_reports(tenant_id, message["_id"], [_report(status)])

    async def _adopt_orphans(self, tenant_id: str, wamid: str) -> None:
        orphans = await self._c.orphan_statuses.find({"tenant_id": tenant_id, "wamid": wamid}).to_list()
        if not orphans:
            return
        message = await self._c.messages.find_one({"tenant_id": tenant_id, "wamid": wamid})
        if message is None:
            return
        await self._merge_reports(tenant_id, message["_id"], [o["report"] for o in orphans])
        await self._c.orphan_statuses.delete_many({"tenant_id": tenant_id, "_id": {"$in": [o["_id"] for o in orphans]}})

    async def _merge_reports(self, tenant_id: str, message_id: str, new_reports: list[Document]) -> None:
        async with self._c.hold("messages", message_id):
            await self._merge_reports_held(tenant_id, message_id, new_reports)

    async def _merge_reports_held(self, tenant_id: str, message_id: str, new_reports: list[Document]) -> None:
        for _ in range(MAX_ATTEMPTS):
            message = await self._c.messages.find_one({"tenant_id": tenant_id, "_id": message_id})
            if message is None:
                raise MessageNotFound(message_id)
            reports: list[Document] = list(message.get("reports", []))
            added = False
            for report in new_reports:
                if not any(_same_report(report, r) for r in reports):
                    reports.append(report)
                    added = True
            if not added:
                return
            reports.sort(key=lambda r: (r["at"], domain.STATUS_RANK.get(r["status"], 9)))
            result = await self._c.messages.update_one(
                {"tenant_id": tenant_id, "_id": message_id, "rev": message.get("rev", 0)},
                {"$set": {"reports": reports, **_visible_state(message, reports)}, "$inc": {"rev": 1}},
            )
            if result.matched_count:
                return
        raise ConcurrentUpdate(f"message {message_id} kept changing")

    async def accept(self, tenant_id: str, accepted: SendAccepted) -> None:
        """Outbound sent it: the wamid arrives, and any status that came first is applied now."""
        message_id = domain.outbound_message_id(tenant_id, accepted.request_id)
        async with self._c.hold("messages", message_id):
            await self._accept(tenant_id, message_id, accepted)
        await self._adopt_orphans(tenant_id, accepted.wamid)

    async def _accept(self, tenant_id: str, message_id: str, accepted: SendAccepted) -> None:
        for _ in range(MAX_ATTEMPTS):
            message = await self._c.messages.find_one({"tenant_id": tenant_id, "_id": message_id})
            if message is None or message["lifecycle_status"] != "pending":
                # Not a request of ours, or already applied (a redelivery).
                return
            now = self._clock()
            changed = message | {"lifecycle_status": "accepted", "lifecycle_at": now}
            result = await self._c.messages.update_one(
                {"tenant_id": tenant_id, "_id": message_id, "rev": message.get("rev", 0)},
                {
                    "$set": {
                        "wamid": accepted.wamid,
                        "lifecycle_status": "accepted",
                        "lifecycle_at": now,
                        **_visible_state(changed, message.get("reports", [])),
                    },
                    "$inc": {"rev": 1},
                },
            )
            if result.matched_count:
                return
        raise ConcurrentUpdate(f"message {message_id} kept changing")

    async def reject(self, tenant_id: str, rejected: SendRejected) -> None:
        message_id = domain.outbound_message_id(tenant_id, rejected.request_id)
        rejection: Document = {"reason": rejected.reason, "message": rejected.message}
        if rejected.meta_error is not None:
            rejection |= {"code": rejected.meta_error.code, "title": rejected.meta_error.title}
        now = self._clock()
        async with self._c.hold("messages", message_id):
            await self._c.messages.update_one(
                {"tenant_id": tenant_id, "_id": message_id, "lifecycle_status": "pending"},
                {
                    "$set": {
                        "lifecycle_status": "failed",
                        "lifecycle_at": now,
                        "rejection": rejection,
                        "status": "failed",
                        "status_at": now,
                        "failure": rejection,
                    },
                    "$inc": {"rev": 1},
                },
            )

    # --- sending -------------------------------------------------------------------------------------------------
    async def find_request(self, tenant_id: str, request_id: str) -> Document | None:
        message_id = domain.outbound_message_id(tenant_id, request_id)
        return await self._c.messages.find_one({"tenant_id": tenant_id, "_id": message_id})

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
        fingerprint = request_hash(message, reply_to_wamid)
        now = self._clock()
        event = SendRequestedEvent.new(
            tenant_id=tenant_id,
            payload=SendRequested(
                request_id=request_id,
                chat_id=chat["_id"],
                phone_number_id=chat["phone_number_id"],
                wa_id=chat["wa_id"],
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
            "_id": message_id,
            "tenant_id": tenant_id,
            "chat_id": chat["_id"],
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
            "rev": 0,
            "outbox": [outbox_entry(event)],
        }
        try:
            await self._c.messages.insert_one(doc)
        except DuplicateKeyError:
            existing = await self._c.messages.find_one({"tenant_id": tenant_id, "_id": message_id})
            if existing is None:
                raise
            if existing.get("request_hash") != fingerprint:
                raise domain.IdempotencyKeyReused(
                    "this Idempotency-Key was already used for a different message"
                ) from None
            return existing
        self._parked("messages", message_id)
        await self._chats.note_outbound(
            tenant_id,
            chat["_id"],
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

    def same_request(self, existing: Document, message: OutgoingMessage, reply_to_wamid: str | None) -> bool:
        return bool(existing.get("request_hash") == request_hash(message, reply_to_wamid))

    # --- reading ---------------------------------------------------------------------------------------------------
    async def get(self, tenant_id: str, chat_id: str, message_id: str) -> Document:
        message = await self._c.messages.find_one(
            {"tenant_id": tenant_id, "chat_id": chat_id, "_id": message_id, "hidden": False}, HIDDEN_FROM_TIMELINE
        )
        if message is None:
            raise MessageNotFound(message_id)
        return (await self._decorate(tenant_id, chat_id, [message]))[0]

    async def timeline(self, tenant_id: str, chat_id: str, cursor: str | None, limit: int) -> Page:
        """Messages and notes of a chat, newest first; reactions ride on their message, replies carry the quote."""
        base_messages = {"tenant_id": tenant_id, "chat_id": chat_id, "hidden": False, "type": {"$ne": "reaction"}}
        base_notes = {"tenant_id": tenant_id, "chat_id": chat_id}
        order = [("at", DESCENDING), ("_id", DESCENDING)]
        messages = (
            await self._c.messages.find(page_filter(base_messages, cursor), HIDDEN_FROM_TIMELINE)
            .sort(order)
            .limit(limit + 1)
            .to_list()
        )
        notes = (
            await self._c.notes.find(page_filter(base_notes, cursor), {"outbox": 0})
            .sort(order)
            .limit(limit + 1)
            .to_list()
        )
        for note in notes:
            note["kind"] = "note"
        for message in messages:
            message["kind"] = "message"
        merged = sorted(messages + notes, key=lambda d: (d["at"], d["_id"]), reverse=True)
        items, cursor_out = next_cursor(merged, limit)
        decorated = await self._decorate(tenant_id, chat_id, [i for i in items if i["kind"] == "message"])
        by_id = {d["_id"]: d for d in decorated}
        return Page([by_id.get(i["_id"], i) if i["kind"] == "message" else i for i in items], cursor_out)

    async def _decorate(self, tenant_id: str, chat_id: str, messages: list[Document]) -> list[Document]:
        wamids = [m["wamid"] for m in messages]
        reactions = await self._c.messages.find(
            {"tenant_id": tenant_id, "chat_id": chat_id, "type": "reaction", "content.message_id": {"$in": wamids}},
            {"content": 1, "at": 1, "wamid": 1},
        ).to_list()
        latest: dict[str, Document] = {}
        for found in sorted(reactions, key=lambda r: (r["at"], r["_id"])):
            # One reactor per chat (the customer): the latest reaction replaces the previous one; none removes it.
            latest[found["content"]["message_id"]] = found
        quoted_wamids = [m["context"]["quoted_wamid"] for m in messages if (m.get("context") or {}).get("quoted_wamid")]
        quoted: dict[str, Document] = {}
        if quoted_wamids:
            async for quote in self._c.messages.find(
                {"tenant_id": tenant_id, "wamid": {"$in": quoted_wamids}},
                {"wamid": 1, "direction": 1, "type": 1, "content": 1, "at": 1, "hidden": 1},
            ):
                quoted[quote["wamid"]] = quote
        out = []
        for message in messages:
            m = dict(message)
            reaction = latest.get(m["wamid"])
            emoji = (reaction or {}).get("content", {}).get("emoji")
            m["reactions"] = [{"emoji": emoji, "at": reaction["at"], "by": "customer"}] if reaction and emoji else []
            quoted_wamid = (m.get("context") or {}).get("quoted_wamid")
            if quoted_wamid:
                q = quoted.get(quoted_wamid)
                m["reply_to"] = {
                    "wamid": quoted_wamid,
                    "message_id": q["_id"] if q else None,
                    "direction": q["direction"] if q else None,
                    "type": q["type"] if q else None,
                    "preview": domain.preview(q["content"]) if q and not q.get("hidden") else None,
                }
            out.append(m)
        return out

    async def resolve_reply(self, tenant_id: str, chat_id: str, message_id: str) -> str:
        """The wamid to quote for one of this chat's messages (it must have reached WhatsApp)."""
        message = await self._c.messages.find_one({"tenant_id": tenant_id, "chat_id": chat_id, "_id": message_id})
        if message is None or str(message["wamid"]).startswith("pending:"):
            raise MessageNotFound(message_id)
        return str(message["wamid"])

    # --- the agent's own view ---------------------------------------------------------------------------------
    async def hide(self, tenant_id: str, chat_id: str, message_id: str) -> None:
        """Delete for me: gone from this tenant's timeline; the customer's copy is untouched. Idempotent."""
        async with self._c.hold("messages", message_id):
            result = await self._c.messages.update_one(
                {"tenant_id": tenant_id, "chat_id": chat_id, "_id": message_id},
                {"$set": {"hidden": True, "hidden_at": self._clock()}},
            )
        if result.matched_count == 0:
            raise MessageNotFound(message_id)

    async def mark_unread(self, tenant_id: str, chat_id: str, message_id: str) -> None:
        async with self._c.hold("messages", message_id):
            result = await self._c.messages.update_one(
                {"tenant_id": tenant_id, "chat_id": chat_id, "_id": message_id, "hidden": False},
                {"$set": {"manual_unread": True}},
            )
        if result.matched_count == 0:
            raise MessageNotFound(message_id)


class NoteRepository:
    """Notes are append-only: there is no update or delete here, by design."""

    def __init__(self, collections: Collections, clock: Clock, parked: Parked) -> None:
        self._c = collections
        self._clock = clock
        self._parked = parked

    async def add(self, chat: Document, note_id: str, author: str, text: str, correlation_id: str | None) -> Document:
        now = self._clock()
        event = NoteAddedEvent.new(
            tenant_id=chat["tenant_id"],
            payload=NoteAdded(
                chat_id=chat["_id"],
                phone_number_id=chat["phone_number_id"],
                wa_id=chat["wa_id"],
                note_id=note_id,
                author=author,
                text=text,
                created_at=now,
            ),
            correlation_id=correlation_id,
            clock=lambda: now,
        )
        doc: Document = {
            "_id": note_id,
            "tenant_id": chat["tenant_id"],
            "chat_id": chat["_id"],
            "author": author,
            "text": text,
            "at": now,
            "outbox": [outbox_entry(event)],
        }
        await self._c.notes.insert_one(doc)
        self._parked("notes", note_id)
        return doc

    async def get(self, tenant_id: str, chat_id: str, note_id: str) -> Document | None:
        return await self._c.notes.find_one({"tenant_id": tenant_id, "chat_id": chat_id, "_id": note_id}, {"outbox": 0})

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
