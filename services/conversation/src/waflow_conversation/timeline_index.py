"""Each chat's timeline in memory: its entries (messages and notes), its reactions, and every wamid.

On FerretDB v1 only a lookup by `_id` is cheap (see repository_messages.py), so what a timeline page or an
inbound message must find by anything else is kept here, rebuilt from one scan at start.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from datetime import datetime

from waflow_conversation import domain
from waflow_conversation.repository import Document, key

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

    def newest_message(self, chat_key: str) -> str | None:
        """The key of the chat's newest message in its timeline (notes are not messages), if any."""
        for _, doc_key, kind in reversed(self._entries.get(chat_key, ())):
            if kind == "message":
                return doc_key
        return None

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
        elif not doc.get("hidden") and domain.shown_as_own_entry(doc.get("type", "")):
            # (edits and revokes stored as messages by earlier versions are not items of their own either)
            self.add(chat_key, doc["at"], doc["_id"], "message")
