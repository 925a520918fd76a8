"""ChatRepository's inbound side: customers' messages counted on their chats (unread, preview, activity, the
24-hour window and its announcements), an agent's message moving the preview, and the window sweep.

A part of ChatRepository (repository.py), kept apart by topic. Counting is conditional on the chat's version
(a writer that finds the chat changed reads it again), and the chat remembers the ids it counted (`applied`), so
a message is counted once whichever instance applies it and however often. The sweep claims each announcement
with a conditional update on the window's state and expiry: one sweeper wins, the others match nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError
from waflow_common.events.conversation import (
    WindowChanged,
    WindowClosedEvent,
    WindowClosingEvent,
    WindowOpenedEvent,
)
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.events.inbound import MessageReceived
from waflow_common.outbox import outbox_entry

from waflow_conversation import domain
from waflow_conversation.repository_base import (
    APPLIED_KEEP,
    Cause,
    Collections,
    Document,
    Parked,
    key,
    unchanged,
)

DUPLICATE_KEY = 11000
ATTEMPTS = 50
Received = Sequence[tuple[str, MessageReceived, Cause | None]]


class ChatActivity:
    """Mixed into ChatRepository, which provides the state and the primitives declared here."""

    _c: Collections
    _clock: Clock
    _parked: Parked

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
        raise NotImplementedError

    async def _after_create(self, tenant_id: str, chat_key: str, customer: str, contact_version: int) -> None:
        raise NotImplementedError

    async def customer_of(self, tenant_id: str, wa_id: str, user_id: str | None = None) -> str:
        raise NotImplementedError

    # --- inbound messages ------------------------------------------------------------------------------------
    async def apply_inbound(self, tenant_id: str, chats: Sequence[tuple[str, Received]]) -> None:
        """Counts each message once, moves activity, preview and window; announces a window (re)opening.

        A customer's first message creates the chat with that message already counted (and the contact's copy
        from the projection), so no one ever sees a new chat without its first message or with its window shut.
        Each chat's messages (at most APPLIED_KEEP, so that all of them are still in `applied` when their records
        are redelivered) are folded into one update conditional on the version read, and the updates of all the
        chats go in one bulk write. A chat another writer changed meanwhile matches nothing: every chat is read
        again and what it has not counted yet is folded again, until every message is counted.
        """
        for _, received in chats:
            if len(received) > APPLIED_KEEP:
                raise ValueError(f"at most {APPLIED_KEEP} messages per write, not {len(received)}")
        pending = {key(tenant_id, chat_id): (chat_id, received) for chat_id, received in chats if received}
        created: list[tuple[str, str, int]] = []
        for _ in range(ATTEMPTS):
            found = {
                doc["_id"]: doc async for doc in self._c.chats.find({"_id": {"$in": list(pending)}}, {"outbox": 0})
            }
            writes: list[InsertOne[Document] | UpdateOne] = []
            parks: list[str] = []
            news: list[tuple[str, str, int]] = []
            for chat_key, (chat_id, received) in pending.items():
                chat = found.get(chat_key)
                if chat is None:
                    m = received[0][1]
                    customer = await self.customer_of(tenant_id, m.wa_id, m.user_id)  # linked already
                    chat = await self._new_chat(
                        tenant_id, chat_id, m.phone_number_id, m.wa_id, m.profile_name, m.user_id, customer
                    )
                    news.append((chat_key, customer, chat["contact_version"]))
                folded = self._fold_inbound(chat, received)
                if folded is None:
                    continue  # every one of them is counted
                update, state, announces = folded
                if chat_key not in found:
                    outbox = update.get("$push", {}).get("outbox", {}).get("$each", [])
                    writes.append(InsertOne(state | {"outbox": outbox}))
                else:
                    update["$inc"] = update.get("$inc", {}) | {"version": 1}
                    writes.append(UpdateOne(unchanged(chat), update))
                if announces:
                    parks.append(chat_key)
            if not writes:
                break
            done = await self._bulk(writes)
            for chat_key in parks:
                self._parked("chats", chat_key)  # harmless if that write lost: the relay finds nothing
            created += news
            if done:
                break
        else:
            raise RuntimeError(f"chats kept changing while messages were counted: {sorted(pending)}")
        for chat_key, customer, contact_version in created:
            await self._after_create(tenant_id, chat_key, customer, contact_version)

    async def _bulk(self, writes: list[InsertOne[Document] | UpdateOne]) -> bool:
        """Whether every write went through (an insert beaten by another creator, or an update whose chat
        changed, did not)."""
        try:
            result = await self._c.chats.bulk_write(writes, ordered=False)
        except BulkWriteError as exc:
            if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise
            return False
        return result.inserted_count + result.modified_count == len(writes)

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
        newest = chat.get("last_message_at") is None or at >= chat["last_message_at"]
        if newest and domain.shown_as_own_entry(m.content.type):  # a reaction shows on its message, not the list
            sets["last_message"] = {
                "message_id": message_id,
                "wamid": m.wamid,
                "direction": "in",
                "type": m.content.type,
                "preview": domain.preview(content),
                "at": at,
            }
            sets["last_message_at"] = at
            sets["last_message_rev"] = 0
        if at > chat["last_activity_at"]:
            sets["last_activity_at"] = at
        if domain.counts_as_unread(m.content.type):
            inc["unread_count"] = 1
            sets["has_unread"] = True
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
        """An agent's message moves the chat's activity and preview (never backwards: guarded in the filter)."""
        at: datetime = last_message["at"]
        chat_key = key(tenant_id, chat_id)
        await self._c.chats.update_one(
            {"_id": chat_key, "$or": [{"last_message_at": None}, {"last_message_at": {"$lte": at}}]},
            {
                "$set": {"last_message": last_message, "last_message_at": at, "last_message_rev": 0},
                "$inc": {"version": 1},
            },
        )
        await self._c.chats.update_one(
            {"_id": chat_key, "last_activity_at": {"$lt": at}},
            {"$set": {"last_activity_at": at}, "$inc": {"version": 1}},
        )

    async def replace_last_message(
        self, tenant_id: str, chat_id: str, message_id: str, shown: Document | None, rev: int = 0
    ) -> bool:
        """If this message is the chat's last message, the chat shows `shown` instead: the message's new state
        after an edit or a revoke (`rev`: how many amendments it has seen), or the newest message still shown once
        this one is hidden (None: none). Returns whether the chat showed the message.

        The guard is in the filter: the preview only ever moves away from this message (a message arriving
        meanwhile is never overwritten), and an older state of the same message never replaces a newer one.
        """
        current = {"$or": [{"last_message_rev": {"$lte": rev}}, {"last_message_rev": {"$exists": False}}]}
        result = await self._c.chats.update_one(
            {"_id": key(tenant_id, chat_id), "last_message.message_id": message_id, **current},
            {
                "$set": {
                    "last_message": shown,
                    "last_message_at": shown["at"] if shown else None,
                    "last_message_rev": rev,
                },
                "$inc": {"version": 1},
            },
        )
        return result.matched_count > 0

    # --- the window sweep ------------------------------------------------------------------------------------
    async def sweep_windows(self, tenant_id: str, now: datetime, lead: timedelta) -> int:
        """Announces window.closing and window.closed for this tenant's chats; returns how many it announced.

        Finds the due windows by the `window_due` index; each announcement is claimed by an update conditional on
        the state and expiry it was found with, so of two sweepers (or a sweeper and a customer writing again)
        exactly one moves the window on and parks the event (whose id is derived from the expiry)."""
        announced = 0
        due = self._c.chats.find(
            {
                "tenant_id": tenant_id,
                "$or": [
                    {"window_state": "open", "window_expires_at": {"$lte": now + lead}},
                    {"window_state": "closing", "window_expires_at": {"$lte": now}},
                ],
            },
            {"outbox": 0, "applied": 0},
        )
        async for chat in due:
            expires: datetime = chat["window_expires_at"]
            phase = domain.window_phase(expires, now, lead)
            if phase in (chat["window_state"], "open"):
                continue
            cls = WindowClosedEvent if phase == "closed" else WindowClosingEvent
            event = self._window_event(cls, chat, expires, at=expires if phase == "closed" else now)
            claimed = await self._c.chats.update_one(
                {"_id": chat["_id"], "window_state": chat["window_state"], "window_expires_at": expires},
                {"$set": {"window_state": phase}, "$push": {"outbox": outbox_entry(event)}, "$inc": {"version": 1}},
            )
            if claimed.modified_count:
                self._parked("chats", chat["_id"])
                announced += 1
        return announced
