"""The in-memory chat list: the order, pages and filters a MongoDB query of the same chats would give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from waflow_conversation.chat_index import ChatFilter, ChatIndex, matcher

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ["vip", "lead", "late"]
LISTS = ["l_news", "l_promo"]


def chat(tenant: str, n: int, minute: int, **fields: Any) -> dict[str, Any]:
    return {
        "_id": f"{tenant}:c{n}",
        "chat_id": f"c{n}",
        "tenant_id": tenant,
        "wa_id": f"39333{n:06d}",
        "profile_name": None,
        "last_activity_at": T0 + timedelta(minutes=minute),
        "unread_count": 0,
        "contact": None,
        "outbox": [{"event": "not kept"}],
    } | fields


def pages(index: ChatIndex, tenant: str, filters: ChatFilter, limit: int) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        items, after = index.page(tenant, matcher(filters), after, limit)
        assert len(items) <= limit
        seen += [c["_id"] for c in items]
        if after is None:
            return seen


contacts = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from([None, "Giulia Rossi", "GIULIA", "Marco"]),
            "profile_name": st.sampled_from([None, "giu", "Anna"]),
            "tags": st.lists(st.sampled_from(TAGS), unique=True),
            "lists": st.lists(st.sampled_from(LISTS), unique=True).map(lambda ids: [{"list_id": i} for i in ids]),
        }
    ),
)
writes = st.lists(
    st.tuples(
        st.sampled_from(["t1", "t2"]),
        st.integers(0, 12),  # which chat
        st.integers(0, 5),  # its activity minute: few values, so equal times are common
        st.integers(0, 2),  # unread
        contacts,
        st.booleans(),  # drop it instead
    ),
    max_size=60,
)
filters = st.builds(
    ChatFilter,
    unread=st.booleans(),
    tag=st.sampled_from([None, *TAGS]),
    list_id=st.sampled_from([None, *LISTS]),
    search=st.sampled_from([None, "giulia", "GIU", "333000", "ann", "nobody"]),
)


def expected(chats: dict[str, dict[str, Any]], tenant: str, f: ChatFilter) -> list[str]:
    """What MongoDB answers: the filters as a query, sorted by (last_activity_at desc, _id desc)."""

    def keep(c: dict[str, Any]) -> bool:
        contact = c["contact"] or {}
        if f.unread and not c["unread_count"] > 0:
            return False
        if f.tag and f.tag not in contact.get("tags", []):
            return False
        if f.list_id and f.list_id not in [ref["list_id"] for ref in contact.get("lists", [])]:
            return False
        if f.search:
            needle = f.search.lower()
            names = [contact.get("name"), contact.get("profile_name"), c["profile_name"]]
            if not any(n and needle in n.lower() for n in names) and f.search not in c["wa_id"]:
                return False
        return True

    mine = [c for c in chats.values() if c["tenant_id"] == tenant and keep(c)]
    return [c["_id"] for c in sorted(mine, key=lambda c: (c["last_activity_at"], c["_id"]), reverse=True)]


@settings(max_examples=300, deadline=None)
@given(writes, filters, st.integers(1, 4))
def test_pages_are_the_sorted_filtered_chats_after_any_writes(
    ops: list[tuple[str, int, int, int, Any, bool]], f: ChatFilter, limit: int
) -> None:
    index = ChatIndex()
    truth: dict[str, dict[str, Any]] = {}
    for tenant, n, minute, unread, contact, drop in ops:
        doc = chat(tenant, n, minute, unread_count=unread, contact=contact)
        if drop:
            index.drop(doc["_id"])
            truth.pop(doc["_id"], None)
        else:
            index.put(doc)
            truth[doc["_id"]] = doc
    assert len(index) == len(truth)
    for tenant in ("t1", "t2"):
        assert pages(index, tenant, f, limit) == expected(truth, tenant, f)
        assert [c["_id"] for c in index.tenant(tenant)] == expected(truth, tenant, ChatFilter())


def test_the_outbox_is_not_kept_and_update_moves_a_chat_to_the_top() -> None:
    index = ChatIndex()
    for n in range(3):
        index.put(chat("t1", n, minute=n))
    assert "outbox" not in (index.get("t1:c0") or {})
    index.update("t1:c0", {"last_activity_at": T0 + timedelta(minutes=10), "unread_count": 1})
    assert [c["chat_id"] for c in index.tenant("t1")] == ["c0", "c2", "c1"]
    assert pages(index, "t1", ChatFilter(unread=True), 10) == ["t1:c0"]
    assert index.page("t2", matcher(ChatFilter()), None, 10) == ([], None)


def test_a_cursor_resumes_strictly_after_the_last_chat_even_at_the_same_time() -> None:
    index = ChatIndex()
    for n in range(5):
        index.put(chat("t1", n, minute=0))
    first, after = index.page("t1", matcher(ChatFilter()), None, 2)
    assert [c["chat_id"] for c in first] == ["c4", "c3"]
    assert after == (T0, "t1:c3")
    rest, end = index.page("t1", matcher(ChatFilter()), after, 10)
    assert [c["chat_id"] for c in rest] == ["c2", "c1", "c0"]
    assert end is None
