"""ChatRepository's inbound side: customers' messages counted on their chats (unread, preview, activity, the
24-hour window and its announcements), an agent's message moving the preview, and the window sweep.

A part of ChatRepository (repository.py), kept apart by topic: it works on the kept copy of each chat that the
repository maintains (`_held`, `_write`, `_index`) under the same per-chat locks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from pymongo import InsertOne, UpdateOne
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
from waflow_conversation.chat_index import ChatIndex
from waflow_conversation.repository_base import APPLIED_KEEP, Cause, Collections, Document, Parked, key


class ChatActivity:
    """Mixed into ChatRepository, which provides the state and the kept-copy primitives declared here."""

    _c: Collections
    _clock: Clock
    _parked: Parked
    _index: ChatIndex
    _unsure: set[str]

    async def _held(self, chat_key: str) -> Document | None:
        raise NotImplementedError

    async def _write(self, chat_key: str, update: Document, sets: Document) -> Document:
        raise NotImplementedError

    async def _existing(self, chat_key: str, chat_id: str) -> Document:
        raise NotImplementedError

    async def _settle(self) -> None:
        raise NotImplementedError

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

    async def customer_of(self, tenant_id: str, wa_id: str, user_id: str | None = None) -> str:
        raise NotImplementedError

    # --- inbound messages ------------------------------------------------------------------------------------
    async def apply_inbound(
        self,
        tenant_id: str,
        chats: Sequence[tuple[str, Sequence[tuple[str, MessageReceived, Cause | None]]]],
        *,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Counts each message once, moves activity, preview and window; announces a window (re)opening.

        A customer's first message creates the chat with that message already counted (and the contact's copy
        from the projection), so no one ever sees a new chat without its first message or with its window shut.
        Each chat's messages (at most APPLIED_KEEP, so that all of them are still in `applied` when their records
        are redelivered) are folded into one update, and the updates of all the chats go in one bulk write: each
        update is a read-modify-write on FerretDB, and one command for many costs a third of one each.

        `then` (storing the messages) runs after the chats are written and before anyone sees the new counts: the
        chats stay locked and their new state is shown only once it returns, so a chat never lists a message that
        its timeline does not have yet.
        """
        for _, received in chats:
            if len(received) > APPLIED_KEEP:
                raise ValueError(f"at most {APPLIED_KEEP} messages per write, not {len(received)}")
        chat_keys = sorted({key(tenant_id, chat_id) for chat_id, _ in chats})
        parked: list[str] = []
        try:
            await self._apply_inbound(tenant_id, chats, chat_keys, parked, then)
        finally:
            for chat_key in parked:
                self._parked("chats", chat_key)

    async def _apply_inbound(
        self,
        tenant_id: str,
        chats: Sequence[tuple[str, Sequence[tuple[str, MessageReceived, Cause | None]]]],
        chat_keys: list[str],
        parked: list[str],
        then: Callable[[], Awaitable[None]] | None,
    ) -> None:
        async with contextlib.AsyncExitStack() as held:
            for chat_key in chat_keys:  # one order for every multi-chat writer: no deadlock
                await held.enter_async_context(self._c.hold("chats", chat_key))
            writes: list[InsertOne[Document] | UpdateOne] = []
            states: dict[str, Document] = {}
            for chat_id, received in chats:
                chat_key = key(tenant_id, chat_id)
                chat = await self._held(chat_key)
                new = chat is None
                if chat is None:
                    m = received[0][1]
                    customer = await self.customer_of(tenant_id, m.wa_id, m.user_id)  # linked already: kept
                    chat = await self._new_chat(
                        tenant_id, chat_id, m.phone_number_id, m.wa_id, m.profile_name, m.user_id, customer
                    )
                folded = self._fold_inbound(chat, received)
                if folded is None:
                    continue  # every one of them was counted before
                update, state, announces = folded
                if new:
                    outbox = update.get("$push", {}).get("outbox", {}).get("$each", [])
                    writes.append(InsertOne(state | {"outbox": outbox}))
                else:
                    writes.append(UpdateOne({"_id": chat_key}, update))
                states[chat_key] = state
                if announces:
                    parked.append(chat_key)
            if writes:
                try:
                    await self._c.chats.bulk_write(writes, ordered=False)
                except BaseException:
                    # Some may be written: the next attempt reads those chats (and what they counted) again.
                    self._unsure.update(chat_keys)
                    raise
            try:
                if then is not None:
                    await then()
            finally:
                for state in states.values():  # what the server holds now, whether or not `then` went through
                    self._index.put(state)

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
        if at > chat["last_activity_at"]:
            sets["last_activity_at"] = at
        if domain.counts_as_unread(m.content.type):
            inc["unread_count"] = 1
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
        """An agent's message moves the chat's activity and preview (never backwards)."""
        at: datetime = last_message["at"]
        chat_key = key(tenant_id, chat_id)
        async with self._c.hold("chats", chat_key):
            chat = await self._existing(chat_key, chat_id)
            sets: Document = {}
            if chat.get("last_message_at") is None or chat["last_message_at"] <= at:
                sets |= {"last_message": last_message, "last_message_at": at}
            if chat["last_activity_at"] < at:
                sets["last_activity_at"] = at
            if sets:
                await self._write(chat_key, {"$set": sets}, sets)

    async def replace_last_message(
        self,
        tenant_id: str,
        chat_id: str,
        message_id: str,
        replacement: Callable[[], Awaitable[Document | None]],
    ) -> None:
        """If this message is the chat's last message, the chat shows `replacement()` instead: the message's new
        state after an edit or a revoke, or the newest message still shown once this one is hidden (None: none).

        `replacement` runs under the chat's lock, which inbound messages are counted and stored under too, so what
        it finds is current and a message arriving meanwhile is never overwritten: the preview only ever moves
        away from this message. (On MongoDB proper the same guard goes into the filter,
        `{"_id": ..., "last_message.message_id": message_id}`; FerretDB answers only `_id` from an index.)
        """
        chat_key = key(tenant_id, chat_id)
        kept = self._index.get(chat_key)
        if kept is not None and chat_key not in self._unsure and not _shows(kept, message_id):
            return  # the usual case: the message is not the chat's last one
        async with self._c.hold("chats", chat_key):
            chat = await self._held(chat_key)
            if chat is None or not _shows(chat, message_id):
                return
            shown = await replacement()
            sets: Document = {"last_message": shown, "last_message_at": shown["at"] if shown else None}
            if (chat.get("last_message"), chat.get("last_message_at")) != (shown, sets["last_message_at"]):
                await self._write(chat_key, {"$set": sets}, sets)

    # --- the window sweep ------------------------------------------------------------------------------------
    async def sweep_windows(self, tenant_id: str, now: datetime, lead: timedelta) -> int:
        """Announces window.closing and window.closed for this tenant's chats; returns how many it announced."""
        announced = 0
        await self._settle()
        due = [
            chat
            for chat in self._index.tenant(tenant_id)
            if chat["window_state"] in ("open", "closing") and chat["window_expires_at"] <= now + lead
        ]
        for chat in due:
            expires: datetime = chat["window_expires_at"]
            phase = domain.window_phase(expires, now, lead)
            if phase in (chat["window_state"], "open"):
                continue
            cls = WindowClosedEvent if phase == "closed" else WindowClosingEvent
            event = self._window_event(cls, chat, expires, at=expires if phase == "closed" else now)
            async with self._c.hold("chats", chat["_id"]):
                held = await self._held(chat["_id"])
                if held is None or (held["window_state"], held["window_expires_at"]) != (chat["window_state"], expires):
                    continue  # the customer wrote meanwhile: the window moved
                sets = {"window_state": phase}
                await self._write(chat["_id"], {"$set": sets, "$push": {"outbox": outbox_entry(event)}}, sets)
            self._parked("chats", chat["_id"])
            announced += 1
        return announced


def _shows(chat: Document, message_id: str) -> bool:
    return bool((chat.get("last_message") or {}).get("message_id") == message_id)
