"""Every chat, in memory: what the chat list, the chat reads and the inbound path use instead of a query.

Conversation is the only writer of its chats and runs as one instance (see the README), so a copy of each chat
kept beside every write is exactly what the database holds. On FerretDB the chat list was the most expensive
thing the service asked for: each page read, decoded and sorted the tenant's whole collection (a third of the
server's CPU at 500 inbound messages/s with an agent's screen polling). Here a page walks a sorted list.

The copy leaves out the outbox (the relay's business, not the screen's). Callers must not change the documents
they get, and a writer hands `put` a new dict that it does not change afterwards (kept as it is, unless it
carries an outbox).
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Document = dict[str, Any]
SortKey = tuple[datetime, str]  # (last_activity_at, _id): the chat list's order, newest first
Matcher = Callable[[Document, str], bool]  # (chat, its searchable names)

NOT_KEPT = "outbox"


@dataclass(frozen=True)
class ChatFilter:
    unread: bool = False
    tag: str | None = None
    list_id: str | None = None
    search: str | None = None


def searchable(chat: Document) -> str:
    """The names a search looks in (the contact's name and profile name, the chat's profile name), lower-cased."""
    contact = chat.get("contact") or {}
    names = (contact.get("name"), contact.get("profile_name"), chat.get("profile_name"))
    return "\0".join(name.lower() for name in names if isinstance(name, str))


def matcher(filters: ChatFilter) -> Matcher:
    """The chat list's filters, all of which must hold: a tag, a list, unread, and a search that is part of a
    name (any case) or whose digits are part of the phone number."""
    tests: list[Matcher] = []
    if filters.unread:
        tests.append(lambda chat, _: chat.get("unread_count", 0) > 0)
    if filters.tag:
        tag = filters.tag
        tests.append(lambda chat, _: tag in ((chat.get("contact") or {}).get("tags") or ()))
    if filters.list_id:
        list_id = filters.list_id
        tests.append(
            lambda chat, _: any(
                ref.get("list_id") == list_id for ref in ((chat.get("contact") or {}).get("lists") or ())
            )
        )
    if filters.search:
        needle = filters.search.strip().lower()
        digits = re.sub(r"\D", "", filters.search)
        if digits:
            tests.append(lambda chat, names: needle in names or digits in chat.get("wa_id", ""))
        else:
            tests.append(lambda chat, names: needle in names)
    if len(tests) <= 1:  # the usual case, and a search walks every chat: no generator per chat
        return tests[0] if tests else lambda chat, names: True
    return lambda chat, names: all(test(chat, names) for test in tests)


class ChatIndex:
    """Chats by `_id`, and per tenant their sort keys in ascending order (a page walks it from the end)."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._names: dict[str, str] = {}  # what a search looks in, made once per change, not once per search
        self._order: defaultdict[str, list[SortKey]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, chat_key: str) -> Document | None:
        return self._docs.get(chat_key)

    def put(self, chat: Document) -> Document:
        """Keeps this state of the chat (without its outbox) and returns what is kept."""
        kept = {k: v for k, v in chat.items() if k != NOT_KEPT} if NOT_KEPT in chat else chat
        chat_key: str = kept["_id"]
        order = self._order[kept["tenant_id"]]
        old = self._docs.get(chat_key)
        new_key: SortKey = (kept["last_activity_at"], chat_key)
        if old is not None:
            old_key: SortKey = (old["last_activity_at"], chat_key)
            if old_key != new_key:
                del order[bisect.bisect_left(order, old_key)]
                bisect.insort(order, new_key)
        else:
            bisect.insort(order, new_key)
        self._docs[chat_key] = kept
        self._names[chat_key] = searchable(kept)
        return kept

    def update(self, chat_key: str, sets: Document) -> Document:
        """The kept chat with these fields set (it must be kept)."""
        return self.put(self._docs[chat_key] | sets)

    def drop(self, chat_key: str) -> None:
        old = self._docs.pop(chat_key, None)
        self._names.pop(chat_key, None)
        if old is not None:
            order = self._order[old["tenant_id"]]
            del order[bisect.bisect_left(order, (old["last_activity_at"], chat_key))]

    def tenant(self, tenant_id: str) -> Iterator[Document]:
        """The tenant's chats, newest activity first."""
        for _, chat_key in reversed(self._order.get(tenant_id, ())):
            yield self._docs[chat_key]

    def page(
        self, tenant_id: str, matches: Matcher, after: SortKey | None, limit: int
    ) -> tuple[list[Document], SortKey | None]:
        """Up to `limit` matching chats, newest activity first, strictly after `after`; and the key to resume
        from when there are more."""
        order = self._order.get(tenant_id, [])
        position = len(order) if after is None else bisect.bisect_left(order, after)
        items: list[Document] = []
        while position > 0:
            position -= 1
            chat_key = order[position][1]
            chat = self._docs[chat_key]
            if matches(chat, self._names[chat_key]):
                if len(items) == limit:
                    last = items[-1]
                    return items, (last["last_activity_at"], last["_id"])
                items.append(chat)
        return items, None
