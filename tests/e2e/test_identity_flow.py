"""The customer's identity across every service, on the real Kafka and database server: the simulator, ingest,
conversation, contacts and outbound. A contact deleted under one form of its number stays unreachable under any
other ("New chat" refuses it, outbound refuses a send, WhatsApp gets no call), and a deleted BSUID-only customer is
never messaged while another BSUID-only customer of the same tenant is, through Meta's `recipient` field."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_common.events.envelope import derived_event_id
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent, TextContent
from waflow_common.events.outbound import SendRequested, SendRequestedEvent, TemplateMessage
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.settings import CommonSettings
from waflow_contacts.main import ContactsSettings
from waflow_contacts.main import create_app as create_contacts
from waflow_conversation.main import ConversationSettings
from waflow_conversation.main import create_app as create_conversation
from waflow_ingest.main import IngestSettings
from waflow_ingest.main import create_app as create_ingest
from waflow_outbound.main import OutboundSettings
from waflow_outbound.main import create_app as create_outbound
from waflow_simulator.client import SimulatorClient
from waflow_simulator.main import create_app as create_simulator
from waflow_simulator.settings import SimulatorSettings
from waflow_testing.fixtures import (
    TENANT_A,
    TopicReader,
    eventually,
    isolated_env,
    put_test_app,
    put_test_tenant,
    serve,
    settings_for,
)

pytestmark = pytest.mark.e2e

WAIT = 30.0
TEMPLATE = {"type": "template", "name": "open_template", "language": "en", "parameters": {"SENTENCE": "hi"}}


@dataclass
class Stack:
    settings: CommonSettings
    sim: SimulatorClient
    chats: httpx.AsyncClient
    contacts: httpx.AsyncClient
    outbound: httpx.AsyncClient
    publisher: EventPublisher


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(settings_env: dict[str, str]) -> AsyncIterator[Stack]:
    env = isolated_env(settings_env, "identity")
    settings = settings_for(ConversationSettings, env)
    await ensure_topics(settings)
    async with Admin(settings) as admin:
        await put_test_app(admin)
        await put_test_tenant(admin, TENANT_A)
    broker = make_broker(settings, client_id="identity-flow-test")
    await broker.start()
    try:
        async with (
            serve(create_simulator(SimulatorSettings(retry_base_seconds=0.05, retry_max_attempts=5))) as sim_url,
            serve(create_ingest(settings_for(IngestSettings, env))) as ingest_url,
            serve(create_conversation(settings)) as conversation_url,
            serve(create_contacts(settings_for(ContactsSettings, env))) as contacts_url,
            serve(create_outbound(settings_for(OutboundSettings, env, whatsapp_api_base_url=sim_url))) as outbound_url,
            SimulatorClient(sim_url) as sim,
            httpx.AsyncClient(base_url=conversation_url, headers=TENANT_A.auth, timeout=30) as chats,
            httpx.AsyncClient(base_url=contacts_url, headers=TENANT_A.auth, timeout=30) as contacts,
            httpx.AsyncClient(base_url=outbound_url, headers=TENANT_A.auth, timeout=30) as outbound,
        ):
            await sim.put_app(
                TENANT_A.app_id,
                app_secret=TENANT_A.app_secret,
                webhook_url=f"{ingest_url}/webhooks/whatsapp/{TENANT_A.app_id}",
            )
            await sim.put_number(
                TENANT_A.phone_number_id,
                display_phone_number=TENANT_A.display_phone_number,
                waba_id=TENANT_A.waba_id,
                app_id=TENANT_A.app_id,
                access_token=TENANT_A.access_token,
                status_flow="none",
            )
            yield Stack(settings, sim, chats, contacts, outbound, EventPublisher(broker, settings))
    finally:
        await broker.stop()


async def chats_matching(stack: Stack, digits: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await stack.chats.get("/v1/chats", params={"search": digits})).json()["items"]
    return items


async def outbound_sees_blacklisted(stack: Stack, identity: str) -> bool:
    r = await stack.outbound.get(f"/v1/recipients/{TENANT_A.phone_number_id}/{identity}")
    return r.status_code == 200 and bool(r.json()["blacklisted"])


def send_to(*, wa_id: str = "", user_id: str | None = None) -> SendRequestedEvent:
    return SendRequestedEvent.new(
        tenant_id=TENANT_A.tenant_id,
        payload=SendRequested(
            request_id=f"req_{uuid.uuid4().hex[:12]}",
            phone_number_id=TENANT_A.phone_number_id,
            wa_id=wa_id,
            user_id=user_id,
            message=TemplateMessage(name="open_template", parameters={"SENTENCE": "hi"}),
            requested_by="automation:test",
        ),
    )


async def refused(stack: Stack, results: TopicReader, command: SendRequestedEvent) -> str:
    await stack.publisher.publish(command)
    wanted = command.payload.request_id
    (result,) = await results.read(1, timeout=WAIT, where=lambda r: r["payload"]["request_id"] == wanted)
    reason: str = result["payload"].get("reason", result["event_type"])
    return reason


async def test_a_contact_deleted_in_one_form_of_its_number_is_unreachable_in_every_form(stack: Stack) -> None:
    national = "55" + str(uuid.uuid4().int)[:8]
    meta_form, typed_form = "521" + national, "52" + national  # Meta's wa_id keeps the 1; agents type without
    written = await stack.sim.customer_message(TENANT_A.phone_number_id, meta_form, text="hola", name="Ana")
    assert written.delivered
    chat = await eventually(lambda: _first(chats_matching(stack, national)), timeout=WAIT)
    contact = await eventually(lambda: _contact_by_phone(stack, f"+52 {national}"), timeout=WAIT)

    deleted = await stack.contacts.delete(f"/v1/contacts/{contact['contact_id']}", headers={"X-Actor": "agent:giulia"})
    assert deleted.status_code == 200, deleted.text
    await eventually(lambda: _blacklisted_chat(stack, chat["chat_id"]), timeout=WAIT)
    await eventually(lambda: outbound_sees_blacklisted(stack, typed_form), timeout=WAIT)

    # "New chat" with the other form finds the deleted customer: refused, no second chat.
    opened = await stack.chats.post("/v1/chats", json={"phone": f"+52 {national}", "opened_by": "agent:giulia"})
    assert (opened.status_code, opened.json()["error"]["code"]) == (409, "blacklisted")
    assert [c["chat_id"] for c in await chats_matching(stack, national)] == [chat["chat_id"]]
    reply = await stack.chats.post(f"/v1/chats/{chat['chat_id']}/messages", json=TEMPLATE)
    assert (reply.status_code, reply.json()["error"]["code"]) == (409, "blacklisted")
    # A send that names either form directly is refused by outbound, and WhatsApp never hears of it.
    async with TopicReader(stack.settings, topics.OUTBOUND_RESULTS) as results:
        assert await refused(stack, results, send_to(wa_id=typed_form)) == "blacklisted"
        assert await refused(stack, results, send_to(wa_id=meta_form)) == "blacklisted"
    for form in (meta_form, typed_form):
        assert await stack.sim.sent(TENANT_A.phone_number_id, to=form) == []


async def test_a_deleted_bsuid_only_customer_is_never_messaged_and_another_one_is(stack: Stack) -> None:
    gone, other = "MX." + uuid.uuid4().hex, "MX." + uuid.uuid4().hex
    for user_id in (gone, other):  # Meta's 2026 webhooks: an empty wa_id, only the business-scoped user id
        wamid = "wamid.E2E" + uuid.uuid4().hex
        await stack.publisher.publish(
            MessageReceivedEvent.new(
                tenant_id=TENANT_A.tenant_id,
                payload=MessageReceived(
                    wamid=wamid,
                    phone_number_id=TENANT_A.phone_number_id,
                    waba_id=TENANT_A.waba_id,
                    wa_id="",
                    user_id=user_id,
                    profile_name="No Number",
                    type="text",
                    timestamp=datetime.now(UTC),
                    content=TextContent(body=f"hi from {user_id}"),
                ),
                event_id=derived_event_id(TENANT_A.tenant_id, wamid),
            )
        )
    contacts = {u: await eventually(lambda u=u: _contact_of(stack, u), timeout=WAIT) for u in (gone, other)}  # type: ignore[misc]
    assert contacts[gone]["contact_id"] != contacts[other]["contact_id"]
    chats = {u: await eventually(lambda u=u: _chat_of(stack, u), timeout=WAIT) for u in (gone, other)}  # type: ignore[misc]
    assert chats[gone]["chat_id"] != chats[other]["chat_id"]

    deleted = await stack.contacts.delete(f"/v1/contacts/{contacts[gone]['contact_id']}")
    assert deleted.status_code == 200, deleted.text
    await eventually(lambda: _blacklisted_chat(stack, chats[gone]["chat_id"]), timeout=WAIT)
    await eventually(lambda: outbound_sees_blacklisted(stack, gone), timeout=WAIT)
    assert not await outbound_sees_blacklisted(stack, other)

    reply = await stack.chats.post(f"/v1/chats/{chats[gone]['chat_id']}/messages", json=TEMPLATE)
    assert (reply.status_code, reply.json()["error"]["code"]) == (409, "blacklisted")
    async with TopicReader(stack.settings, topics.OUTBOUND_RESULTS) as results:
        assert await refused(stack, results, send_to(user_id=gone)) == "blacklisted"
    sent = await stack.chats.post(f"/v1/chats/{chats[other]['chat_id']}/messages", json=TEMPLATE)
    assert sent.status_code == 202, sent.text
    calls = await eventually(lambda: _calls(stack, other), timeout=WAIT)
    assert [(c.body.get("recipient"), c.body.get("to"), c.error_code) for c in calls] == [(other, None, None)]
    assert await stack.sim.sent(TENANT_A.phone_number_id, to=gone) == []


async def _first(items: Any) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = await items
    return found[0] if found else None


async def _contact_by_phone(stack: Stack, phone: str) -> dict[str, Any] | None:
    r = await stack.contacts.get(f"/v1/contacts/by-phone/{phone}")
    return r.json() if r.status_code == 200 else None


async def _contact_of(stack: Stack, user_id: str) -> dict[str, Any] | None:
    items: list[dict[str, Any]] = (await stack.contacts.get("/v1/contacts", params={"limit": 200})).json()["items"]
    return next((c for c in items if c.get("user_id") == user_id), None)


async def _chat_of(stack: Stack, user_id: str) -> dict[str, Any] | None:
    items: list[dict[str, Any]] = (await stack.chats.get("/v1/chats", params={"limit": 200})).json()["items"]
    return next((c for c in items if c.get("user_id") == user_id), None)


async def _blacklisted_chat(stack: Stack, chat_id: str) -> bool:
    return bool((await stack.chats.get(f"/v1/chats/{chat_id}")).json()["blacklisted"])


async def _calls(stack: Stack, identity: str) -> list[Any] | None:
    return await stack.sim.sent(TENANT_A.phone_number_id, to=identity) or None
