"""A customer's edits and revokes in MongoDB: applied to the message they name, held until it appears.

An amendment is never a message of its own (no timeline item, no unread, no preview, no window): it is added to
the named message's `amendments` (once per wamid), and the message's shown content, `edited_at`, `history` and
`revoked_at` follow from all of them by domain_amendments.amended_state. One that names a wamid not seen yet
waits in `held_amendments`, like a status that comes before its message, and is applied when that message is
stored. Same rules as the other repositories here: documents by `_id` alone, each write under its document's lock.

The message is rewritten as a whole under its lock (FerretDB answers only a filter on `_id` alone from an index,
see repository.py); on MongoDB proper the same write becomes conditional on what was read (the filter names the
number of amendments read, and a miss reads again), which needs no lock. Known limit: held amendments for a wamid
that never arrives are kept (no expiry yet, as for orphan statuses).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from waflow_common.events.inbound import EditContent, MessageReceived, RevokeContent

from waflow_conversation import domain
from waflow_conversation.domain_amendments import Amendment, amended_state
from waflow_conversation.repository import ChatRepository, Collections, Document, MessageNotFound, key
from waflow_conversation.timeline_index import TimelineIndex

log = logging.getLogger(__name__)


def amendment_doc(m: MessageReceived, chat_id: str) -> Document:
    """How an edit or revoke is kept: on the message it names, or held until that message appears."""
    message: dict[str, Any] | None = m.content.message if isinstance(m.content, EditContent) else None
    return {
        "wamid": m.wamid,
        "kind": m.content.type,
        "at": domain.millis(m.timestamp),
        "message": message,
        "chat_id": chat_id,  # the chat the customer wrote in: an amendment only ever changes a message of theirs
    }


def _amendment(doc: Document) -> Amendment:
    return Amendment(wamid=doc["wamid"], kind=doc["kind"], at=doc["at"], message=doc.get("message"))


def _novel(known: list[Document], new: Iterable[Document]) -> list[Document]:
    """The amendments not kept yet (by wamid: Meta's duplicates and Kafka's redeliveries apply once)."""
    seen = {a["wamid"] for a in known}
    added = []
    for amendment in new:
        if amendment["wamid"] not in seen:
            seen.add(amendment["wamid"])
            added.append(amendment)
    return added


class AmendmentRepository:
    def __init__(self, collections: Collections, chats: ChatRepository, index: TimelineIndex) -> None:
        self._c = collections
        self._chats = chats
        self._index = index
        # key(tenant, wamid) of every held amendment's target, so storing a message looks nothing up for the
        # (nearly all) messages nobody amended before they arrived.
        self._held: set[str] = set()

    async def load(self) -> None:
        """Reads which wamids have held amendments once (at start)."""
        async for doc in self._c.held_amendments.find({}, {"_id": 1}):
            self._held.add(doc["_id"])

    async def apply(self, tenant_id: str, chat_id: str, m: MessageReceived) -> None:
        """Applies one edit or revoke to the message it names, or holds it until that message is stored."""
        if not isinstance(m.content, EditContent | RevokeContent):
            raise ValueError(f"{m.content.type} does not amend another message")
        target = m.content.original_message_id
        amendment = amendment_doc(m, chat_id)
        message_key = self._index.message_for(tenant_id, target)
        if message_key is not None:
            await self._amend(message_key, [amendment])
            return
        held_key = key(tenant_id, target)
        async with self._c.hold("held_amendments", held_key):
            held = await self._c.held_amendments.find_one({"_id": held_key})
            if held is None:
                await self._c.held_amendments.insert_one(
                    {"_id": held_key, "tenant_id": tenant_id, "wamid": target, "amendments": [amendment]}
                )
            elif added := _novel(held["amendments"], [amendment]):
                await self._c.held_amendments.update_one(
                    {"_id": held_key}, {"$set": {"amendments": held["amendments"] + added}}
                )
            self._held.add(held_key)
        # The message may have been stored meanwhile: look again, so one of the two always sees the other.
        await self.adopt(tenant_id, [target])

    async def adopt(self, tenant_id: str, wamids: Iterable[str]) -> None:
        """Applies what was held for these wamids, once their messages are stored."""
        for wamid in wamids:
            held_key = key(tenant_id, wamid)
            message_key = self._index.message_for(tenant_id, wamid)
            if held_key not in self._held or message_key is None:
                continue
            async with self._c.hold("held_amendments", held_key):
                held = await self._c.held_amendments.find_one({"_id": held_key})
                if held is not None:
                    await self._amend(message_key, held["amendments"])
                    await self._c.held_amendments.delete_one({"_id": held_key})
                self._held.discard(held_key)

    async def _amend(self, message_key: str, new: list[Document]) -> None:
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key}, {"outbox": 0, "request_hash": 0})
            if message is None:
                raise MessageNotFound(message_key)
            foreign = [a for a in new if a["chat_id"] != message["chat_id"] or message["direction"] != "in"]
            for amendment in foreign:
                log.warning(
                    "an amendment names a message that is not the customer's own; ignored",
                    extra={"wamid": amendment["wamid"], "original": message["wamid"]},
                )
            known: list[Document] = list(message.get("amendments", []))
            added = _novel(known, [a for a in new if a not in foreign])
            if added:
                amendments = sorted(known + added, key=lambda a: (a["at"], a["wamid"]))
                original: Document = message.get("original_content") or message["content"]
                state = amended_state(original, message["at"], [_amendment(a) for a in amendments])
                sets: Document = {
                    "amendments": amendments,
                    "original_content": original,
                    "content": state.content,
                    "edited_at": state.edited_at,
                    "history": [{"content": v.content, "at": v.at} for v in state.history],
                    "revoked_at": state.revoked_at,
                }
                await self._c.messages.update_one({"_id": message_key}, {"$set": sets})
                message |= sets
        # Also for an amendment seen before: the process may have stopped between the message and the chat.
        view = domain.last_message_view(message)

        async def shown() -> Document:
            return view

        await self._chats.replace_last_message(message["tenant_id"], message["chat_id"], message["message_id"], shown)
