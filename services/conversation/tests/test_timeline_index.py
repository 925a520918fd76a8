"""The in-memory timeline: which entries a chat shows, and its newest message (what the chat list previews)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from waflow_conversation.timeline_index import TimelineIndex

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
CHAT = "t1:ch_1"


def doc(n: int, kind: str = "text", **extra: Any) -> dict[str, Any]:
    base = {"_id": f"t1:msg_{n}", "tenant_id": "t1", "chat_id": "ch_1", "wamid": f"wamid.{n}", "type": kind}
    return base | {"at": T0 + timedelta(seconds=n), "hidden": False, "content": {"type": kind}} | extra


def test_edits_and_revokes_stored_by_earlier_versions_are_not_entries() -> None:
    index = TimelineIndex()
    for d in (doc(1), doc(2, "edit"), doc(3, "revoke"), doc(4, "reaction", content={"message_id": "wamid.1"})):
        index.load(CHAT, d, "message")
    entries, _ = index.page(CHAT, None, 10)
    assert [e[1] for e in entries] == ["t1:msg_1"]
    assert index.reaction(CHAT, "wamid.1") == "t1:msg_4"
    assert index.message_for("t1", "wamid.2") == "t1:msg_2"  # still known: a duplicate is recognised


def test_the_newest_message_skips_notes_and_what_was_removed() -> None:
    index = TimelineIndex()
    assert index.newest_message(CHAT) is None
    index.load(CHAT, doc(1), "message")
    index.load(CHAT, doc(2), "message")
    index.load(CHAT, {"_id": "t1:note_1", "at": T0 + timedelta(seconds=5)}, "note")
    assert index.newest_message(CHAT) == "t1:msg_2"
    index.remove(CHAT, "t1:msg_2")
    assert index.newest_message(CHAT) == "t1:msg_1"
    index.remove(CHAT, "t1:msg_1")
    assert index.newest_message(CHAT) is None
