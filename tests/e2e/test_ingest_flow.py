"""End to end on real Kafka: customers write through the WhatsApp simulator, which signs and POSTs like Meta;
ingest turns every delivery into typed events on wa.inbound.v1 and archives the raw body."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.settings import CommonSettings
from waflow_ingest.main import IngestSettings, create_app
from waflow_simulator.client import SimulatorClient
from waflow_simulator.main import create_app as create_simulator
from waflow_simulator.models import CustomerMessage
from waflow_simulator.settings import SimulatorSettings
from waflow_testing.fixtures import FIXTURES, SeededTenant, TopicReader, serve, settings_for

pytestmark = pytest.mark.e2e

# One customer message of each type, as the simulator's `content` (Meta's object under the type's name).
MESSAGES: dict[str, Any] = {
    "text": {"body": "Hi! Is my order #4471 shipped yet?"},
    "image": {"id": "1029384756", "mime_type": "image/jpeg", "sha256": "aGFzaA==", "caption": "the box"},
    "video": {"id": "1029384757", "mime_type": "video/mp4", "sha256": "aGFzaA=="},
    "audio": {"id": "1029384758", "mime_type": "audio/ogg; codecs=opus", "sha256": "aGFzaA==", "voice": True},
    "document": {"id": "1029384759", "mime_type": "application/pdf", "sha256": "aGFzaA==", "filename": "inv.pdf"},
    "sticker": {"id": "1029384760", "mime_type": "image/webp", "sha256": "aGFzaA==", "animated": False},
    "location": {"latitude": 45.46, "longitude": 9.19, "name": "Duomo", "address": "Piazza del Duomo"},
    "contacts": [
        {
            "name": {"formatted_name": "Ana Ruiz", "first_name": "Ana"},
            "phones": [{"phone": "+34 600 000 000", "type": "CELL"}],
        }
    ],
    "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}},
    "button": {"payload": "STOP", "text": "Stop promotions"},
    "reaction": {"message_id": "wamid.HBgLMTU1NTc2NTQzMjEVAgARGBI5Q0IwQjBFQkRBOUE2MTAwQTkA", "emoji": "\U0001f44d"},
    "order": {
        "catalog_id": "1",
        "text": "two please",
        "product_items": [{"product_retailer_id": "sku-1", "quantity": 2, "item_price": 9.5, "currency": "EUR"}],
    },
    "system": {"body": "User changed number", "type": "user_changed_number", "wa_id": "15557650000"},
    "unsupported": {"type": "poll"},
}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def sim(
    settings_env: dict[str, str], tenants: tuple[SeededTenant, SeededTenant]
) -> AsyncIterator[SimulatorClient]:
    ingest = create_app(settings_for(IngestSettings, settings_env))
    simulator = create_simulator(SimulatorSettings(retry_base_seconds=0.05, retry_max_attempts=3))
    async with serve(ingest) as ingest_url, serve(simulator) as sim_url, SimulatorClient(sim_url) as client:
        for tenant in tenants:
            await client.put_app(
                tenant.app_id,
                app_secret=tenant.app_secret,
                webhook_url=f"{ingest_url}/webhooks/whatsapp/{tenant.app_id}",
            )
            await client.put_number(
                tenant.phone_number_id,
                display_phone_number=tenant.display_phone_number,
                waba_id=tenant.waba_id,
                app_id=tenant.app_id,
                access_token=tenant.access_token,
            )
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def inbound(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.INBOUND) as reader:
        yield reader


def customer() -> str:
    return "1555" + str(uuid.uuid4().int)[:7]


@pytest.mark.parametrize("kind", sorted(MESSAGES))
async def test_a_customer_message_of_every_type_arrives_typed(
    kind: str, sim: SimulatorClient, inbound: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    tenant = tenants[0]
    wa_id = customer()
    result = await sim.customer_message(
        tenant.phone_number_id, wa_id, type=kind, content=MESSAGES[kind], name="Zoë Ünal"
    )
    assert result.delivered
    (event,) = await inbound.read(1, where=lambda e: e["payload"].get("wamid") == result.wamid)
    assert event["event_type"] == "message.received"
    assert event["tenant_id"] == tenant.tenant_id
    assert event["payload"]["wa_id"] == wa_id
    assert event["payload"]["content"]["type"] == kind
    if kind != "system":
        assert event["payload"]["profile_name"] == "Zoë Ünal"  # non-ASCII survives Meta's escaping and the HMAC


async def test_duplicate_deliveries_carry_one_event_id(
    sim: SimulatorClient, inbound: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    result = await sim.customer_message(tenants[1].phone_number_id, customer(), text="once", duplicates=2)
    assert result.attempts >= 3
    events = await inbound.read(3, where=lambda e: e["payload"].get("wamid") == result.wamid)
    assert len(events) == 3
    assert len({e["event_id"] for e in events}) == 1
    assert {e["tenant_id"] for e in events} == {tenants[1].tenant_id}


async def test_a_shuffled_batch_yields_every_message(
    sim: SimulatorClient, inbound: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    wa_ids = [customer() for _ in range(5)]
    batch = [
        CustomerMessage.model_validate(
            {
                "phone_number_id": tenants[0].phone_number_id,
                "from": w,
                "type": "text",
                "content": {"body": f"message {i}"},
                "timestamp": 1767263000 + i,
            }
        )
        for i, w in enumerate(wa_ids)
    ]
    result = await sim.customer_batch(batch, shuffle=True)
    assert result.delivered
    events = await inbound.read(5, where=lambda e: e["payload"].get("wamid") in set(result.wamids))
    assert sorted(e["payload"]["wa_id"] for e in events) == sorted(wa_ids)


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "whatsapp").glob("*.json")))
async def test_every_sample_replayed_through_the_simulator_reaches_the_topic(
    name: str, sim: SimulatorClient, inbound: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    body = json.loads((FIXTURES / "whatsapp" / name).read_text())
    result = await sim.raw_webhook(tenants[0].app_id, body)
    assert result.delivered
    assert result.status_code == 200
    ids = {
        item["id"]
        for entry in body["entry"]
        for change in entry["changes"]
        for item in change["value"].get("messages", []) + change["value"].get("statuses", [])
    }
    if ids:
        events = await inbound.read(len(ids), where=lambda e: e["payload"].get("wamid") in ids)
        assert {e["payload"]["wamid"] for e in events} == ids
    else:
        (event,) = await inbound.read(1, where=lambda e: e["event_type"] == "template.status")
        assert event["payload"]["name"] == body["entry"][0]["changes"][0]["value"]["message_template_name"]
