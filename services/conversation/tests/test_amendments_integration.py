"""A customer's edits and revokes change the message they name, seen through the REST API (real Kafka and DB)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from waflow_conversation import domain
from waflow_conversation.repository import ChatRepository, Collections
from waflow_conversation.repository_messages import MessageRepository

from .conftest import Stack, eventually, new_wa_id, new_wamid

pytestmark = pytest.mark.integration


async def _item(stack: Stack, chat_id: str, message_id: str) -> dict[str, Any]:
    r = await stack.get(f"/v1/chats/{chat_id}/messages/{message_id}")
    assert r.status_code == 200, r.text
    item: dict[str, Any] = r.json()
    return item


async def _when(stack: Stack, chat_id: str, message_id: str, test: Any) -> dict[str, Any] | None:
    item = await _item(stack, chat_id, message_id)
    return item if test(item) else None


def _iso(at: Any) -> str:
    return str(at.isoformat().replace("+00:00", "Z"))


async def test_an_edit_changes_its_message_once_and_in_timestamp_order(stack: Stack) -> None:
    wa_id = new_wa_id()
    at = stack.clock.now - timedelta(minutes=10)
    original = stack.text(wa_id, "I ordered 2 boxes", at=at)
    await stack.publish(original)
    chat = await stack.chat_for(wa_id)
    [item] = await stack.timeline(chat["chat_id"])
    message_id = item["message_id"]

    newer = stack.edit(wa_id, original.payload.wamid, "I ordered 3 boxes", at=at + timedelta(minutes=2))
    await stack.publish(newer, newer, newer)  # Meta's retries: one edit
    edited = await eventually(
        lambda: _when(stack, chat["chat_id"], message_id, lambda i: i["edited_at"] is not None), what="the edit"
    )
    assert edited["content"] == {"type": "text", "body": "I ordered 3 boxes"}
    assert edited["edited_at"] == _iso(newer.payload.timestamp)
    assert edited["history"] == [{"content": {"type": "text", "body": "I ordered 2 boxes"}, "at": _iso(at)}]
    assert edited["revoked_at"] is None

    # An older edit that arrives late goes into the history; it does not overwrite the newer one.
    older = stack.edit(wa_id, original.payload.wamid, "I ordered 4 boxes", at=at + timedelta(minutes=1))
    await stack.publish(older, newer)
    settled = await eventually(
        lambda: _when(stack, chat["chat_id"], message_id, lambda i: len(i["history"]) == 2), what="the older edit"
    )
    assert settled["content"]["body"] == "I ordered 3 boxes"
    assert [v["content"]["body"] for v in settled["history"]] == ["I ordered 2 boxes", "I ordered 4 boxes"]
    assert settled["edited_at"] == _iso(newer.payload.timestamp)

    # No item, no unread and no preview of its own; the chat's last message shows the new text.
    marker = stack.text(wa_id, "marker", at=at + timedelta(minutes=3))
    await stack.publish(marker)
    await eventually(lambda: stack.preview_is(wa_id, "marker"))
    items = await stack.timeline(chat["chat_id"])
    assert [i["content"]["body"] for i in items] == ["marker", "I ordered 3 boxes"]
    assert (await stack.chat_for(wa_id))["unread_count"] == 2


async def test_an_edit_of_the_last_message_shows_in_the_chat_list(stack: Stack) -> None:
    wa_id = new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    first = stack.text(wa_id, "hello", at=at - timedelta(seconds=2))
    last = stack.text(wa_id, "my adress is Via Roma 1", at=at)
    await stack.publish(first, stack.text(wa_id, "hello again", at=at - timedelta(seconds=1)), last)
    await eventually(lambda: stack.preview_is(wa_id, "my adress is Via Roma 1"))
    await stack.publish(stack.edit(wa_id, last.payload.wamid, "my address is Via Roma 1", at=at + timedelta(minutes=1)))
    await eventually(lambda: stack.preview_is(wa_id, "my address is Via Roma 1"), what="the edited preview")
    chat = await stack.chat_for(wa_id)
    assert chat["unread_count"] == 3
    assert chat["last_message"]["at"] == _iso(at)  # still that message's own time
    # Editing an earlier message leaves the preview alone.
    await stack.publish(stack.edit(wa_id, first.payload.wamid, "hi", at=at + timedelta(minutes=2)))
    items = await eventually(
        lambda: _timeline_if(stack, chat["chat_id"], lambda items: items[-1]["content"]["body"] == "hi")
    )
    assert len(items) == 3
    assert (await stack.chat_for(wa_id))["last_message"]["preview"] == "my address is Via Roma 1"


async def _timeline_if(stack: Stack, chat_id: str, test: Any) -> list[dict[str, Any]] | None:
    items = await stack.timeline(chat_id)
    return items if test(items) else None


async def test_a_revoke_hides_the_content_keeps_it_for_audit_and_previews_as_deleted(stack: Stack) -> None:
    wa_id = new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    kept = stack.text(wa_id, "hi", at=at - timedelta(seconds=1))
    secret = stack.text(wa_id, "my card is 4111 1111", at=at)
    await stack.publish(kept, secret)
    await eventually(lambda: stack.preview_is(wa_id, "my card is 4111 1111"))
    chat = await stack.chat_for(wa_id)
    revoke = stack.revoke(wa_id, secret.payload.wamid, at=at + timedelta(minutes=1))
    await stack.publish(revoke, revoke)
    await eventually(lambda: stack.preview_is(wa_id, domain.REVOKED_PREVIEW), what="the preview of a deleted message")

    items = await stack.timeline(chat["chat_id"])
    assert len(items) == 2  # the deleted message stays in its place, without its content
    gone = items[0]
    assert (gone["content"], gone["revoked_at"], gone["history"]) == (None, _iso(revoke.payload.timestamp), [])
    assert items[1]["content"]["body"] == "hi"
    single = await _item(stack, chat["chat_id"], gone["message_id"])
    assert single["content"] is None
    after = await stack.chat_for(wa_id)
    assert after["unread_count"] == 2
    assert after["last_message"]["message_id"] == gone["message_id"]
    # Kept in the document for audit.
    stored = await stack.stored("messages", stack.a, gone["message_id"])
    assert stored is not None
    assert stored["content"]["body"] == "my card is 4111 1111"
    assert [a["wamid"] for a in stored["amendments"]] == [revoke.payload.wamid]
    # A reply quoting it does not show it either.
    reply = stack.text(wa_id, "sorry", quoted=secret.payload.wamid, at=at + timedelta(minutes=2))
    await stack.publish(reply)
    await eventually(lambda: stack.preview_is(wa_id, "sorry"))
    assert (await stack.timeline(chat["chat_id"]))[0]["reply_to"]["preview"] == domain.REVOKED_PREVIEW


async def test_amendments_that_come_before_their_message_wait_for_it(stack: Stack) -> None:
    wa_id = new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    edited_wamid, revoked_wamid = new_wamid(), new_wamid()
    edit = stack.edit(wa_id, edited_wamid, "see you at 6", at=at + timedelta(minutes=1))
    revoke = stack.revoke(wa_id, revoked_wamid, at=at + timedelta(minutes=1))
    await stack.publish(edit, revoke, edit)
    for wamid in (edited_wamid, revoked_wamid):
        await eventually(lambda w=wamid: stack.stored("held_amendments", stack.a, w), what="held amendments")
    # Held, not applied to anything: no chat exists for them.
    r = await stack.get("/v1/chats", search=wa_id)
    assert r.json()["items"] == []

    await stack.publish(
        stack.text(wa_id, "see you at 5", wamid=edited_wamid, at=at),
        stack.text(wa_id, "oops", wamid=revoked_wamid, at=at + timedelta(seconds=1)),
    )
    chat = await stack.chat_for(wa_id)

    def amended(items: list[dict[str, Any]]) -> bool:
        return len(items) == 2 and items[0]["revoked_at"] is not None and items[1]["edited_at"] is not None

    items = await eventually(lambda: _timeline_if(stack, chat["chat_id"], amended), what="the held amendments")
    assert items[1]["content"] == {"type": "text", "body": "see you at 6"}
    assert len(items[1]["history"]) == 1  # the edit held twice applied once
    assert items[1]["history"][0]["content"]["body"] == "see you at 5"
    assert items[0]["content"] is None
    assert await eventually(lambda: stack.preview_is(wa_id, domain.REVOKED_PREVIEW))
    assert (await stack.chat_for(wa_id))["unread_count"] == 2
    assert await stack.stored("held_amendments", stack.a, edited_wamid) is None  # nothing left waiting


async def test_an_edit_before_its_message_in_one_batch_applies_to_it(stack: Stack) -> None:
    wa_id = new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    original = stack.text(wa_id, "colour: red", at=at)
    edit = stack.edit(wa_id, original.payload.wamid, "colour: blue", at=at + timedelta(seconds=30))
    batch = [(edit.payload, None), (original.payload, None), (edit.payload, None)]
    await stack.context.messages.record_inbound(stack.a.tenant_id, batch)
    chat = await stack.chat_for(wa_id)
    [item] = await stack.timeline(chat["chat_id"])
    assert item["content"]["body"] == "colour: blue"
    assert [v["content"]["body"] for v in item["history"]] == ["colour: red"]
    assert (chat["unread_count"], chat["last_message"]["preview"]) == (1, "colour: blue")
    assert await stack.stored("held_amendments", stack.a, original.payload.wamid) is None


async def test_nobody_amends_another_customers_or_another_tenants_message(stack: Stack) -> None:
    wa_id, other = new_wa_id(), new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    original = stack.text(wa_id, "my order is 4471", at=at)
    await stack.publish(original)
    chat = await stack.chat_for(wa_id)
    wamid = original.payload.wamid
    later = at + timedelta(minutes=1)
    # Applied directly, so that each has been dealt with when the call returns.
    foreign = [stack.edit(other, wamid, "hijacked", at=later), stack.revoke(other, wamid, at=later)]
    await stack.context.messages.record_inbound(stack.a.tenant_id, [(e.payload, None) for e in foreign])
    elsewhere = [
        stack.edit(wa_id, wamid, "hijacked", tenant=stack.b, at=later),
        stack.revoke(wa_id, wamid, tenant=stack.b, at=later),
    ]
    await stack.context.messages.record_inbound(stack.b.tenant_id, [(e.payload, None) for e in elsewhere])
    held = await stack.stored("held_amendments", stack.b, wamid)  # B never saw that wamid: B holds its own
    assert held is not None
    assert len(held["amendments"]) == 2
    [item] = await stack.timeline(chat["chat_id"])
    assert (item["content"], item["edited_at"], item["revoked_at"]) == (
        {"type": "text", "body": "my order is 4471"},
        None,
        None,
    )
    assert (await stack.chat_for(wa_id))["last_message"]["preview"] == "my order is 4471"
    r = await stack.get("/v1/chats", search=other)
    assert r.json()["items"] == []  # an amendment opens no chat
    stored = await stack.stored("messages", stack.a, item["message_id"])
    assert stored is not None
    assert "amendments" not in stored


async def test_held_amendments_survive_a_restart(stack: Stack) -> None:
    wa_id = new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    original = stack.text(wa_id, "pick up at 5", at=at)
    edit = stack.edit(wa_id, original.payload.wamid, "pick up at 7", at=at + timedelta(minutes=1))
    await stack.publish(edit)
    await eventually(lambda: stack.stored("held_amendments", stack.a, original.payload.wamid), what="held")
    # A process started now (on the same database) finds what is held and applies it with the original.
    collections = Collections(stack.database)
    chats = ChatRepository(collections, stack.clock, lambda _c, _k: None, lambda _t: [stack.a.phone_number_id])
    restarted = MessageRepository(collections, chats, stack.clock, lambda _c, _k: None)
    await restarted.record_inbound(stack.a.tenant_id, [(original.payload, None)])
    message_id = domain.inbound_message_id(stack.a.tenant_id, original.payload.wamid)
    stored = await stack.stored("messages", stack.a, message_id)
    assert stored is not None
    assert (stored["content"]["body"], stored["history"][0]["content"]["body"]) == ("pick up at 7", "pick up at 5")
    assert await stack.stored("held_amendments", stack.a, original.payload.wamid) is None
