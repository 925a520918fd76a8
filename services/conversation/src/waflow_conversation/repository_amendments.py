"""A customer's edits and revokes in MongoDB: applied to the message they name, held until it appears.

An amendment is never a message of its own (no timeline item, no unread, no preview, no window): it is added to
the named message's `amendments` once per wamid (`$push` with the wamid's absence in the filter), and the
message's shown content, `edited_at`, `history` and `revoked_at` follow from all of them by
domain_amendments.amended_state, written conditional on the `amend_version` they were computed from (a writer that
finds the message changed computes again). One that names a wamid not seen yet waits in `held_amendments`, like a
status that comes before its message, and is applied when that message is stored; held ones expire after
HELD_DAYS (a TTL index).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError
from waflow_common.events.inbound import EditContent, MessageReceived, RevokeContent

from waflow_conversation import domain
from waflow_conversation.domain_amendments import Amendment, amended_state
from waflow_conversation.repository import ChatRepository, Collections, Document, MessageNotFound, key
from waflow_conversation.repository_base import unchanged

ATTEMPTS = 50

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


class AmendmentRepository:
    def __init__(self, collections: Collections, chats: ChatRepository) -> None:
        self._c = collections
        self._chats = chats

    async def _by_wamid(self, tenant_id: str, wamid: str) -> str | None:
        found = await self._c.messages.find_one({"tenant_id": tenant_id, "wamid": wamid}, {"_id": 1})
        return str(found["_id"]) if found else None

    async def apply(self, tenant_id: str, chat_id: str, m: MessageReceived) -> None:
        """Applies one edit or revoke to the message it names, or holds it until that message is stored."""
        if not isinstance(m.content, EditContent | RevokeContent):
            raise ValueError(f"{m.content.type} does not amend another message")
        target = m.content.original_message_id
        amendment = amendment_doc(m, chat_id)
        message_key = await self._by_wamid(tenant_id, target)
        if message_key is not None:
            await self._amend(message_key, [amendment])
            return
        with contextlib.suppress(DuplicateKeyError):  # held already
            await self._c.held_amendments.update_one(
                {"_id": key(tenant_id, target), "amendments.wamid": {"$ne": amendment["wamid"]}},
                {
                    "$push": {"amendments": amendment},
                    "$inc": {"held": 1},
                    "$setOnInsert": {"tenant_id": tenant_id, "wamid": target, "held_at": datetime.now(UTC)},
                },
                upsert=True,
            )
        # The message may have been stored meanwhile: look again, so one of the two always sees the other.
        await self.adopt(tenant_id, [target])

    async def adopt(self, tenant_id: str, wamids: Iterable[str]) -> None:
        """Applies what was held for these wamids, once their messages are stored; then drops it, unless more
        was held meanwhile (`held` counts them: then that is applied too)."""
        held_keys = [key(tenant_id, wamid) for wamid in wamids]
        if not held_keys:
            return
        async for first in self._c.held_amendments.find({"_id": {"$in": held_keys}}, {"wamid": 1}):
            for _ in range(ATTEMPTS):
                held = await self._c.held_amendments.find_one({"_id": first["_id"]})
                message_key = await self._by_wamid(tenant_id, first["wamid"])
                if held is None or message_key is None:
                    break
                await self._amend(message_key, held["amendments"])
                dropped = await self._c.held_amendments.delete_one({"_id": held["_id"], "held": held.get("held")})
                if dropped.deleted_count:
                    break

    async def _amend(self, message_key: str, new: list[Document]) -> None:
        message: Document | None = None
        for _ in range(ATTEMPTS):
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
            if not added:
                break
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
            update = {"$set": sets, "$inc": {"amend_version": 1}}
            if (await self._c.messages.update_one(unchanged(message, "amend_version"), update)).modified_count:
                message |= sets | {"amend_version": int(message.get("amend_version", 0)) + 1}
                break
        else:
            raise RuntimeError(f"a message kept changing while it was amended: {message_key}")
        assert message is not None
        # Also for an amendment seen before: the process may have stopped between the message and the chat. The
        # version rides along, so an older state of the message never replaces a newer one in the chat list.
        await self._chats.replace_last_message(
            message["tenant_id"],
            message["chat_id"],
            message["message_id"],
            domain.last_message_view(message),
            int(message.get("amend_version", 0)),
        )


def _novel(known: list[Document], new: Iterable[Document]) -> list[Document]:
    """The amendments not kept yet (by wamid: Meta's duplicates and Kafka's redeliveries apply once)."""
    seen = {a["wamid"] for a in known}
    added = []
    for amendment in new:
        if amendment["wamid"] not in seen:
            seen.add(amendment["wamid"])
            added.append(amendment)
    return added
