"""Conversation and the customer's identity, on the real Kafka and database server: "New chat" with another form of
a known number finds the customer's chat (and refuses a deleted one), a BSUID joins the chat of a customer known by
phone, and BSUID-only customers never share a chat."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from waflow_common import topics
from waflow_common.events.contacts import ContactChangedEvent, ContactSnapshot
from waflow_common.events.envelope import derived_event_id
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent
from waflow_conversation.domain import chat_id_for
from waflow_testing.fixtures import TENANT_A, TopicReader, eventually

from .conftest import Stack, new_wamid

pytestmark = pytest.mark.integration

TEMPLATE = {"type": "template", "name": "open_template", "language": "en", "parameters": {"SENTENCE": "hi"}}


def wrote(stack: Stack, wa_id: str, user_id: str | None, body: str) -> MessageReceivedEvent:
    wamid = new_wamid()
    return MessageReceivedEvent.new(
        tenant_id=TENANT_A.tenant_id,
        payload=MessageReceived(
            wamid=wamid,
            phone_number_id=TENANT_A.phone_number_id,
            waba_id=TENANT_A.waba_id,
            wa_id=wa_id,
            user_id=user_id,
            profile_name="Ana",
            type="text",
            timestamp=stack.clock.now,
            content={"type": "text", "body": body},  # type: ignore[arg-type]
        ),
        event_id=derived_event_id(TENANT_A.tenant_id, wamid),
    )


def deleted(stack: Stack, *, wa_id: str = "", user_id: str | None = None) -> ContactChangedEvent:
    return ContactChangedEvent.new(
        tenant_id=TENANT_A.tenant_id,
        payload=ContactSnapshot(
            contact_id=f"ct_{uuid.uuid4().hex[:10]}",
            wa_id=wa_id,
            user_id=user_id,
            phone_e164=f"+{wa_id}" if wa_id else None,
            deleted=True,
            blacklisted=True,
            updated_at=datetime.now(UTC),
            version=2,
        ),
    )


def bsuid() -> str:
    return "MX." + uuid.uuid4().hex


async def chats_of(stack: Stack, text: str) -> list[dict[str, Any]]:
    """Every chat of tenant A whose number contains `text` (the chat list's own search)."""
    r = await stack.get("/v1/chats", search=text, limit=100)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def chat_with(stack: Stack, chat_id: str, unread: int) -> dict[str, Any] | None:
    r = await stack.get(f"/v1/chats/{chat_id}")
    return r.json() if r.status_code == 200 and r.json()["unread_count"] == unread else None


@pytest.mark.parametrize(
    ("meta_form", "typed"),
    [
        ("52155{}", "+52 55 {}"),  # Mexico: Meta's id keeps the 1 after 52, the agent types the number without
        ("5255{}", "+52 1 55 {}"),
        ("551198{}", "+55 11 8{}"),  # Brazil: with the ninth digit, typed without it
        ("55118{}", "+55 11 98{}"),
    ],
)
async def test_new_chat_with_another_form_of_a_number_opens_the_customers_chat(
    stack: Stack, meta_form: str, typed: str
) -> None:
    subscriber = str(uuid.uuid4().int)[:7] if meta_form.startswith("55") else str(uuid.uuid4().int)[:8]
    wa_id, phone = meta_form.format(subscriber), typed.format(subscriber)
    await stack.publish(stack.text(wa_id, "hola"))
    chat = await stack.chat_for(wa_id)

    r = await stack.post("/v1/chats", {"phone": phone, "opened_by": "agent:giulia"})
    assert r.status_code == 200, r.text
    assert r.json()["chat_id"] == chat["chat_id"]
    assert [c["chat_id"] for c in await chats_of(stack, subscriber)] == [chat["chat_id"]]


async def test_new_chat_with_another_form_of_a_deleted_contacts_number_is_refused(stack: Stack) -> None:
    national = "55" + str(uuid.uuid4().int)[:8]
    await stack.publish(stack.text("521" + national, "hola"))  # Meta's form
    await stack.chat_for("521" + national)
    await stack.publish(deleted(stack, wa_id="521" + national))
    await eventually(lambda: _blacklisted(stack, "521" + national))

    async with TopicReader(stack.settings, topics.CONVERSATION) as announced:
        r = await stack.post("/v1/chats", {"phone": f"+52 {national}", "opened_by": "agent:giulia"})
        opened = await announced.read(1, timeout=2, where=lambda e: e["event_type"] == "chat.opened")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "blacklisted")
    assert opened == []
    assert len(await chats_of(stack, national)) == 1


async def _blacklisted(stack: Stack, wa_id: str) -> dict[str, Any] | None:
    chat = await stack.chat_for(wa_id)
    return chat if chat["blacklisted"] else None


async def test_a_customer_who_wrote_by_phone_keeps_their_chat_when_a_bsuid_appears(stack: Stack) -> None:
    wa_id, user_id = "3462" + str(uuid.uuid4().int)[:7], bsuid()
    await stack.publish(stack.text(wa_id, "first, by phone"))
    chat = await stack.chat_for(wa_id)
    await stack.publish(wrote(stack, wa_id, user_id, "now with a BSUID"))
    await stack.publish(wrote(stack, "", user_id, "and only the BSUID"))

    seen = await eventually(lambda: chat_with(stack, chat["chat_id"], unread=3))
    assert (seen["wa_id"], seen["user_id"]) == (wa_id, user_id)
    assert [c["chat_id"] for c in await chats_of(stack, wa_id)] == [chat["chat_id"]]
    async with TopicReader(stack.settings, topics.OUTBOUND_COMMANDS) as commands:
        r = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", TEMPLATE)
        (requested,) = await commands.read(1)
    assert r.status_code == 202, r.text
    assert (requested["payload"]["wa_id"], requested["payload"]["user_id"]) == (wa_id, user_id)


async def test_two_bsuid_only_customers_never_share_a_chat_a_blacklist_entry_or_a_send(stack: Stack) -> None:
    first, second = bsuid(), bsuid()
    await stack.publish(wrote(stack, "", first, "I am the first"), wrote(stack, "", second, "I am the second"))
    ids = [chat_id_for(TENANT_A.tenant_id, TENANT_A.phone_number_id, u) for u in (first, second)]
    chats = [await eventually(lambda i=i: chat_with(stack, i, unread=1)) for i in ids]
    assert [c["user_id"] for c in chats] == [first, second]
    assert [c["wa_id"] for c in chats] == ["", ""]
    assert [c["last_message"]["preview"] for c in chats] == ["I am the first", "I am the second"]

    await stack.publish(deleted(stack, user_id=first))

    async def first_blacklisted() -> bool:
        return bool((await stack.get(f"/v1/chats/{ids[0]}")).json()["blacklisted"])

    await eventually(first_blacklisted)
    assert (await stack.get(f"/v1/chats/{ids[1]}")).json()["blacklisted"] is False
    async with TopicReader(stack.settings, topics.OUTBOUND_COMMANDS) as commands:
        refused = await stack.post(f"/v1/chats/{ids[0]}/messages", TEMPLATE)
        sent = await stack.post(f"/v1/chats/{ids[1]}/messages", TEMPLATE)
        requested = await commands.read(2, timeout=3)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "blacklisted")
    assert sent.status_code == 202, sent.text
    assert [(r["payload"]["wa_id"], r["payload"]["user_id"]) for r in requested] == [("", second)]
