"""The agent's chat end to end on real Kafka and the database server: a customer writes through the WhatsApp simulator,
ingest publishes, conversation shows the chat (with the contact's tags and the window open); the agent answers,
outbound sends it to the simulator, whose statuses come back until read; after the window (conversation's clock
is injected) free-form is refused and a template goes through. Meta's samples, delivered twice, make one
message each.

Runs outbound too when its app exists (it is built in parallel); without it the test stops at send.requested.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_common.events.contacts import ContactChangedEvent, ContactSnapshot
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_conversation.main import ConversationSettings
from waflow_conversation.main import create_app as create_conversation
from waflow_ingest.main import IngestSettings
from waflow_ingest.main import create_app as create_ingest
from waflow_simulator.client import SimulatorClient
from waflow_simulator.main import create_app as create_simulator
from waflow_simulator.settings import SimulatorSettings
from waflow_testing.fixtures import (
    TENANT_A,
    SeededTenant,
    TopicReader,
    eventually,
    fixture_json,
    isolated_env,
    put_test_app,
    put_test_tenant,
    serve,
    settings_for,
)

try:
    from waflow_outbound.main import OutboundSettings
    from waflow_outbound.main import create_app as create_outbound

    HAVE_OUTBOUND = True
except ImportError:  # outbound not built yet
    HAVE_OUTBOUND = False

pytestmark = pytest.mark.e2e

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Flow:
    sim: SimulatorClient
    api: httpx.AsyncClient
    publisher: EventPublisher
    clock: Clock
    settings: ConversationSettings
    outbound: bool


# The whole pipeline (simulator, ingest, Kafka, conversation, outbound) stands between a cause and its effect.
WAIT = 30.0


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def flow(settings_env: dict[str, str]) -> AsyncIterator[Flow]:
    env = isolated_env(settings_env, "chat")
    conversation_settings = settings_for(ConversationSettings, env)
    await ensure_topics(conversation_settings)
    async with Admin(conversation_settings) as admin:
        await put_test_app(admin)
        await put_test_tenant(admin, TENANT_A)
    clock = Clock()
    simulator = create_simulator(SimulatorSettings(retry_base_seconds=0.05, retry_max_attempts=5))
    broker = make_broker(conversation_settings, client_id="chat-flow-test")
    await broker.start()
    async with (
        serve(simulator) as sim_url,
        serve(create_ingest(settings_for(IngestSettings, env))) as ingest_url,
        serve(create_conversation(conversation_settings, clock=clock)) as conversation_url,
        SimulatorClient(sim_url) as sim,
        httpx.AsyncClient(base_url=conversation_url, headers=TENANT_A.auth, timeout=30) as api,
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
            status_flow="read",
        )
        flow = Flow(sim, api, EventPublisher(broker, conversation_settings), clock, conversation_settings, False)
        try:
            if not HAVE_OUTBOUND:
                yield flow
            else:
                outbound_app = create_outbound(settings_for(OutboundSettings, env, whatsapp_api_base_url=sim_url))
                async with serve(outbound_app):
                    flow.outbound = True
                    yield flow
        finally:
            await broker.stop()


def contact_changed(tenant: SeededTenant, wa_id: str, tags: list[str]) -> ContactChangedEvent:
    return ContactChangedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=ContactSnapshot(
            contact_id=f"ct_{wa_id}",
            wa_id=wa_id,
            phone_e164="+" + wa_id,
            name="Giulia Rossi",
            tags=tags,
            updated_at=datetime.now(UTC),
            version=1,
        ),
    )


async def chat_of(flow: Flow, wa_id: str) -> dict[str, Any] | None:
    items: list[dict[str, Any]] = (await flow.api.get("/v1/chats", params={"search": wa_id})).json()["items"]
    return next((c for c in items if c["wa_id"] == wa_id), None)


async def test_customer_writes_agent_answers_statuses_reach_read_then_the_window_closes(flow: Flow) -> None:
    wa_id = "1555" + str(uuid.uuid4().int)[:7]
    result = await flow.sim.customer_message(
        TENANT_A.phone_number_id, wa_id, text="Hi! Is my order #4471 shipped yet?", name="Giulia"
    )
    assert result.delivered
    await flow.publisher.publish(contact_changed(TENANT_A, wa_id, ["vip"]))

    async def tagged() -> dict[str, Any] | None:
        chat = await chat_of(flow, wa_id)
        if chat is None or not chat["contact"] or not chat["last_message"]:
            return None
        return chat if chat["contact"]["tags"] == ["vip"] else None

    chat = await eventually(tagged, timeout=WAIT)
    assert chat["window"]["open"] is True
    assert chat["unread_count"] == 1
    assert chat["last_message"]["wamid"] == result.wamid
    messages = f"/v1/chats/{chat['chat_id']}/messages"

    async with TopicReader(flow.settings, topics.OUTBOUND_COMMANDS) as commands:
        answer = await flow.api.post(messages, json={"type": "text", "body": "Yes, it ships today."})
        assert answer.status_code == 202, answer.text
        requested = await commands.read(1)
    assert requested[0]["payload"]["message"]["body"] == "Yes, it ships today."
    message_id = answer.json()["message"]["message_id"]

    async def status_is(wanted: str) -> dict[str, Any] | None:
        message: dict[str, Any] = (await flow.api.get(f"{messages}/{message_id}")).json()
        return message if message["status"] == wanted else None

    if flow.outbound:
        sent = await eventually(lambda: _sent_to(flow, wa_id, 1), timeout=WAIT)
        assert sent[0].type == "text"
        read = await eventually(lambda: status_is("read"), timeout=WAIT)
        assert read["wamid"] == sent[0].wamid

    flow.clock.now += timedelta(hours=24, minutes=1)
    refused = await flow.api.post(messages, json={"type": "text", "body": "Still there?"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "window_closed"
    template = {"type": "template", "name": "open_template", "language": "en", "parameters": {"SENTENCE": "hi"}}
    accepted = await flow.api.post(messages, json=template)
    assert accepted.status_code == 202, accepted.text
    if flow.outbound:
        sent = await eventually(lambda: _sent_to(flow, wa_id, 2), timeout=WAIT)
        assert sent[-1].type == "template"


async def _sent_to(flow: Flow, wa_id: str, count: int) -> list[Any] | None:
    sent = [s for s in await flow.sim.sent(TENANT_A.phone_number_id, wa_id) if s.wamid]
    return sent if len(sent) >= count else None


async def test_metas_samples_delivered_twice_make_one_message_each(flow: Flow) -> None:
    samples = ["text_message.json", "reply_with_context.json", "image_with_caption.json", "location.json"]
    sent: dict[str, str] = {}  # wamid -> customer
    for name in samples:
        body = fixture_json(name)
        message = body["entry"][0]["changes"][0]["value"]["messages"][0]
        sent[message["id"]] = message["from"]
        delivery = await flow.sim.raw_webhook(TENANT_A.app_id, body, duplicates=1)
        assert delivery.delivered
    for customer in set(sent.values()):
        expected = sorted(w for w, c in sent.items() if c == customer)
        chat = await eventually(lambda c=customer: chat_of(flow, c), timeout=WAIT)  # type: ignore[misc]

        async def shown(chat_id: str = chat["chat_id"], n: int = len(expected)) -> list[str] | None:
            items = (await flow.api.get(f"/v1/chats/{chat_id}/messages", params={"limit": 200})).json()["items"]
            wamids = [i["wamid"] for i in items if i["kind"] == "message"]
            return wamids if len(wamids) >= n else None

        wamids = await eventually(shown, timeout=WAIT)
        # Every sample exactly once, although each webhook was delivered twice.
        assert sorted(wamids) == expected
        latest = await chat_of(flow, customer)
        assert latest is not None
        assert latest["unread_count"] == len(expected)
