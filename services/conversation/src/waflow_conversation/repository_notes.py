"""Notes in MongoDB: append-only (each an insert under a new unique id), in the chat's timeline, filtered by text,
author and time on the `(tenant_id, chat_id, at, _id)` index."""

from __future__ import annotations

from datetime import datetime

from waflow_common.events.conversation import NoteAdded, NoteAddedEvent
from waflow_common.events.envelope import Clock
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.repository import Collections, Document, Page, Parked, key, next_cursor, page_filter
from waflow_conversation.repository_base import NEWEST_FIRST, regex_literal


class NoteRepository:
    """Notes are append-only: there is no update or delete here, by design."""

    def __init__(self, collections: Collections, clock: Clock, parked: Parked) -> None:
        self._c = collections
        self._clock = clock
        self._parked = parked

    async def add(self, chat: Document, note_id: str, author: str, text: str, correlation_id: str | None) -> Document:
        now = domain.millis(self._clock())
        event = NoteAddedEvent.new(
            tenant_id=chat["tenant_id"],
            payload=NoteAdded(
                chat_id=chat["chat_id"],
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
            query["text"] = {"$regex": regex_literal(text), "$options": "i"}
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
            .sort(NEWEST_FIRST)
            .limit(limit + 1)
            .to_list()
        )
        items, cursor_out = next_cursor(docs, limit)
        return Page(items, cursor_out)
