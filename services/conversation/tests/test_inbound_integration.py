"""Inbound messages become chats and timelines exactly once, whatever Meta and Kafka redeliver."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from waflow_common import topics
from waflow_conversation import domain
from waflow_conversation.repository import APPLIED_KEEP
from waflow_testing.fixtures import TopicReader, fixture_json

from .conftest import Stack, eventually, new_wa_id, new_wamid

pytestmark = pytest.mark.integration


async def _counted(stack: Stack, wa_id: str, unread: int) -> dict[str, Any] | None:
    chat = await stack.chat_for(wa_id)
    return chat if chat["unread_count"] == unread and chat["last_message"] else None


async def test_customer_message_opens_a_chat_with_the_window_open(stack: Stack) -> None:
    wa_id = new_wa_id()
    sample = fixture_json("text_message.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    event = stack.text(wa_id, sample["text"]["body"], wamid=new_wamid())
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        await stack.publish(event)
        # A new chat appears with its first message counted, its window open and its timeline holding it.
        chat = await stack.chat_for(wa_id)
        assert chat["unread_count"] == 1  # never a new chat without its first message
        items = await stack.timeline(chat["chat_id"])
        assert len(items) == 1
        announced = await conversation.read(1)
    assert chat["unread_count"] == 1
    assert chat["window"]["open"] is True
    assert chat["window"]["expires_at"] is not None
    assert chat["last_message"]["preview"] == sample["text"]["body"]
    assert chat["display_name"] == "Test Customer"
    assert [e["event_type"] for e in announced] == ["window.opened"]
    assert announced[0]["payload"]["chat_id"] == chat["chat_id"]

    items = await stack.timeline(chat["chat_id"])
    assert [(i["kind"], i["direction"], i["content"]) for i in items] == [
        ("message", "in", {"type": "text", "body": sample["text"]["body"]})
    ]


async def test_duplicates_and_redeliveries_make_one_message_and_one_unread(stack: Stack) -> None:
    wa_id = new_wa_id()
    first, second = stack.text(wa_id, "one"), stack.text(wa_id, "two")
    # Meta retries the webhook and Kafka redelivers: the same event_id arrives several times, interleaved.
    await stack.publish(first, first, second, first, second)
    chat = await stack.chat_for(wa_id)

    async def settled() -> list[dict[str, Any]] | None:
        items = await stack.timeline(chat["chat_id"])
        return items if len(items) >= 2 else None

    items = await eventually(settled)
    marker = stack.text(wa_id, "three")
    await stack.publish(marker)
    await eventually(lambda: _unread_is(stack, wa_id, 3))
    items = await stack.timeline(chat["chat_id"])
    assert sorted(i["content"]["body"] for i in items) == ["one", "three", "two"]


async def _unread_is(stack: Stack, wa_id: str, count: int) -> bool:
    chat = await stack.chat_for(wa_id)
    return bool(chat["unread_count"] == count)


async def test_every_whatsapp_type_is_typed_in_the_timeline(stack: Stack) -> None:
    wa_id = new_wa_id()
    contents: list[dict[str, Any]] = [
        {"type": "image", "id": "1479537139650973", "mime_type": "image/jpeg", "caption": "the box was damaged"},
        {"type": "audio", "id": "9876", "mime_type": "audio/ogg; codecs=opus", "voice": True},
        {"type": "location", "latitude": 45.46, "longitude": 9.19, "name": "Duomo"},
        {"type": "contacts", "contacts": [{"name": {"formatted_name": "Ada"}, "phones": [{"phone": "+3912"}]}]},
        {"type": "interactive", "kind": "button_reply", "reply_id": "yes", "title": "Yes, ship it"},
        {"type": "button", "payload": "STOP", "text": "Stop promotions"},
        {
            "type": "order",
            "catalog_id": "c1",
            "product_items": [{"product_retailer_id": "p1", "quantity": 2, "item_price": 9.5, "currency": "EUR"}],
        },
        {"type": "unsupported", "original_type": "poll", "raw": {"type": "unsupported"}},
    ]
    base = stack.clock.now
    events = [stack.received(wa_id, c, at=base + timedelta(seconds=i)) for i, c in enumerate(contents)]
    await stack.publish(*events)
    chat = await stack.chat_for(wa_id)

    async def all_there() -> list[dict[str, Any]] | None:
        items = await stack.timeline(chat["chat_id"])
        return items if len(items) == len(contents) else None

    items = await eventually(all_there)
    by_type = {i["type"]: i["content"] for i in items}
    assert by_type["image"]["caption"] == "the box was damaged"
    assert by_type["audio"]["voice"] is True
    assert by_type["location"]["name"] == "Duomo"
    assert by_type["contacts"]["contacts"][0]["name"]["formatted_name"] == "Ada"
    assert by_type["interactive"]["title"] == "Yes, ship it"
    assert by_type["button"]["text"] == "Stop promotions"
    assert by_type["order"]["product_items"][0]["quantity"] == 2
    assert by_type["unsupported"]["original_type"] == "poll"
    assert items[0]["type"] == "unsupported"  # newest first


async def test_reactions_ride_on_their_message_and_replies_carry_the_quote(stack: Stack) -> None:
    wa_id = new_wa_id()
    reaction_sample = fixture_json("reaction_add.json")["entry"][0]["changes"][0]["value"]["messages"][0]
    original = stack.text(wa_id, "Where is my parcel?")
    at = stack.clock.now + timedelta(seconds=5)
    reply = stack.text(wa_id, "Thanks, but I need it before Friday", quoted=original.payload.wamid, at=at)
    react = stack.received(
        wa_id,
        {"type": "reaction", "message_id": original.payload.wamid, "emoji": reaction_sample["reaction"]["emoji"]},
        at=at + timedelta(seconds=1),
    )
    await stack.publish(original, reply, react)
    chat = await stack.chat_for(wa_id)

    async def both() -> list[dict[str, Any]] | None:
        items = await stack.timeline(chat["chat_id"])
        return items if len(items) == 2 and items[1]["reactions"] else None

    items = await eventually(both)
    newest, oldest = items
    assert oldest["reactions"][0]["emoji"] == reaction_sample["reaction"]["emoji"]
    assert newest["reply_to"]["message_id"] == oldest["message_id"]
    assert newest["reply_to"]["preview"] == "Where is my parcel?"
    # A reaction is not a new message: two unread, not three.
    assert (await stack.chat_for(wa_id))["unread_count"] == 2

    removal = stack.received(
        wa_id, {"type": "reaction", "message_id": original.payload.wamid}, at=at + timedelta(seconds=2)
    )
    await stack.publish(removal)

    async def removed() -> bool:
        items = await stack.timeline(chat["chat_id"])
        return items[1]["reactions"] == []

    await eventually(removed)


async def test_window_follows_metas_timestamp_and_late_messages_never_shorten_it(stack: Stack) -> None:
    wa_id = new_wa_id()
    now = stack.clock.now
    newer = stack.text(wa_id, "newer", at=now - timedelta(hours=1))
    older = stack.text(wa_id, "older", at=now - timedelta(hours=5))
    await stack.publish(newer, older)
    await eventually(lambda: _unread_is(stack, wa_id, 2))
    chat = await stack.chat_for(wa_id)
    assert chat["window"]["expires_at"].startswith((now + timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M:%S"))
    assert chat["last_message"]["preview"] == "newer"
    # A reaction does not open a window (REFERENCE §10).
    closed = new_wa_id()
    await stack.publish(stack.received(closed, {"type": "reaction", "message_id": new_wamid(), "emoji": "👍"}))
    assert (await stack.chat_for(closed))["window"] == {"open": False, "opened_at": None, "expires_at": None}


async def test_concurrent_messages_count_exactly(stack: Stack) -> None:
    wa_ids = [new_wa_id() for _ in range(4)]
    events = [stack.text(w, f"m{i}") for w in wa_ids for i in range(10)]
    # Published concurrently and twice: 4 partitions worth of work, every record redelivered once.
    await asyncio.gather(*(stack.publisher.publish(e) for e in events + events))
    for wa_id in wa_ids:
        await eventually(lambda w=wa_id: _unread_is(stack, w, 10), what=f"10 unread for {wa_id}")
    chat = await stack.chat_for(wa_ids[0])
    assert len(await stack.timeline(chat["chat_id"])) == 10


async def test_poison_records_are_dead_lettered_and_the_consumer_goes_on(stack: Stack) -> None:
    wa_id = new_wa_id()
    async with TopicReader(stack.settings, topics.dlq(topics.INBOUND)) as dlq:
        await stack.publisher.publish_raw(topics.INBOUND, b"{not json", key=b"x", headers={})
        missing_tenant = json.loads(stack.text(wa_id, "orphan").to_json())
        missing_tenant["tenant_id"] = None
        await stack.publisher.publish_raw(
            topics.INBOUND, json.dumps(missing_tenant).encode(), key=wa_id.encode(), headers={}
        )
        letters = await dlq.read(2, timeout=20)
    assert len(letters) == 2
    # Different keys, different partitions: the two letters may arrive in either order.
    by_type = {letter["error_type"]: letter for letter in letters}
    assert "invalid event" in by_type["ValidationError"]["error"]
    assert by_type["MissingTenant"]["consumer"] == "conversation"
    await stack.publish(stack.text(wa_id, "still here"))
    assert await eventually(lambda: stack.preview_is(wa_id, "still here"), what="the next message applied")


async def test_messages_written_together_count_once_even_for_a_busy_chat_and_a_redelivered_batch(
    stack: Stack,
) -> None:
    busy, quiet = new_wa_id(), new_wa_id()
    at = stack.clock.now - timedelta(minutes=5)
    burst = [stack.text(busy, f"m{n}", at=at + timedelta(seconds=n)) for n in range(2 * APPLIED_KEEP + 3)]
    others = [stack.text(quiet, f"q{n}", at=at + timedelta(seconds=n)) for n in range(3)]
    batch = [*burst[:10], *others, burst[3], *burst[10:], others[0]]  # Meta's duplicates inside one batch
    for _ in range(2):  # and the whole batch redelivered
        await stack.context.messages.record_inbound(stack.a.tenant_id, [(e.payload, None) for e in batch])

    chat = await eventually(lambda: _counted(stack, busy, len(burst)))
    assert chat["last_message"]["preview"] == burst[-1].payload.content.body  # type: ignore[union-attr]
    bodies = [item["content"]["body"] for item in await stack.timeline(chat["chat_id"])]
    assert bodies == [f"m{n}" for n in reversed(range(len(burst)))]
    assert (await eventually(lambda: _counted(stack, quiet, 3)))["last_message"]["preview"] == "q2"


async def test_a_chat_counted_but_not_stored_before_a_crash_is_not_counted_twice(stack: Stack) -> None:
    wa_id = new_wa_id()
    events = [stack.text(wa_id, f"m{n}") for n in range(APPLIED_KEEP)]
    tenant_id = stack.a.tenant_id
    chat_id = domain.chat_id_for(tenant_id, stack.a.phone_number_id, wa_id)
    # The process counted them on a new chat and died before it stored them...
    counted = [(domain.inbound_message_id(tenant_id, e.payload.wamid), e.payload, None) for e in events]
    await stack.context.chats.apply_inbound(tenant_id, [(chat_id, counted)])
    # ...so Kafka redelivers the records to the next one.
    await stack.context.messages.record_inbound(tenant_id, [(e.payload, None) for e in events])
    settled = await eventually(lambda: _counted(stack, wa_id, APPLIED_KEEP))
    assert len(await stack.timeline(settled["chat_id"])) == APPLIED_KEEP
    assert (await stack.chat_for(wa_id))["unread_count"] == APPLIED_KEEP


async def test_a_message_of_a_type_we_do_not_know_opens_the_window_again(stack: Stack) -> None:
    """A customer message is a customer message, whatever its type: it refreshes the 24-hour window."""
    wa_id = new_wa_id()
    now = stack.clock.now
    await stack.publish(stack.text(wa_id, "hello", at=now - timedelta(hours=25)))
    chat = await eventually(lambda: _counted(stack, wa_id, 1))
    assert chat["window"]["open"] is False  # it closed an hour ago
    poll = stack.received(
        wa_id, {"type": "unsupported", "original_type": "poll", "raw": {"type": "poll"}}, at=now - timedelta(minutes=1)
    )
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        await stack.publish(poll)
        reopened = await eventually(lambda: _window_open(stack, wa_id), what="the window open again")
        announced = await conversation.read(2, timeout=10)
    expires = poll.payload.timestamp + domain.WINDOW
    assert reopened["window"]["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert reopened["window"]["opened_at"] == poll.payload.timestamp.isoformat().replace("+00:00", "Z")
    opened = [e for e in announced if e["event_type"] == "window.opened" and e["payload"]["chat_id"] == chat["chat_id"]]
    assert [e["payload"]["expires_at"] for e in opened] == [reopened["window"]["expires_at"]]


async def _window_open(stack: Stack, wa_id: str) -> dict[str, Any] | None:
    chat = await stack.chat_for(wa_id)
    return chat if chat["window"]["open"] else None
