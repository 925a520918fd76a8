"""Outbound test fixtures: the WhatsApp simulator and outbound served over real HTTP, and event helpers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase
from waflow_common import topics
from waflow_common.events.contacts import ContactChangedEvent, ContactSnapshot
from waflow_common.events.conversation import ChatRead, ChatReadEvent
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent, TextContent
from waflow_common.events.outbound import SendRequested, SendRequestedEvent, TemplateMessage, TextMessage
from waflow_common.kafka import EventPublisher, make_broker
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings
from waflow_outbound.main import OutboundSettings, create_app
from waflow_simulator.client import SimulatorClient
from waflow_simulator.main import create_app as create_simulator
from waflow_simulator.settings import SimulatorSettings
from waflow_testing.fixtures import SeededTenant, TopicReader, serve, settings_for

# Webhooks the simulator sends for customers and statuses go nowhere: outbound does not need ingest.
NOWHERE = "http://127.0.0.1:9/webhooks"


def new_wa_id() -> str:
    return "1555" + str(uuid.uuid4().int)[:8]


@dataclass
class Simulator:
    url: str
    client: SimulatorClient


async def configure_simulator(client: SimulatorClient, tenants: tuple[SeededTenant, ...], rate: int = 1000) -> None:
    for tenant in tenants:
        await client.put_app(tenant.app_id, app_secret=tenant.app_secret, webhook_url=NOWHERE)
        await client.put_number(
            tenant.phone_number_id,
            display_phone_number=tenant.display_phone_number,
            waba_id=tenant.waba_id,
            app_id=tenant.app_id,
            access_token=tenant.access_token,
            rate_per_second=rate,
            status_flow="none",
        )


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def simulator(tenants: tuple[SeededTenant, SeededTenant]) -> AsyncIterator[Simulator]:
    app = create_simulator(SimulatorSettings(retry_max_attempts=1, webhook_timeout_seconds=1.0))
    async with serve(app) as url, SimulatorClient(url) as client:
        await configure_simulator(client, tenants)
        yield Simulator(url, client)


def outbound_settings(settings_env: dict[str, str], simulator_url: str, **overrides: Any) -> OutboundSettings:
    return settings_for(
        OutboundSettings,
        settings_env,
        whatsapp_api_base_url=simulator_url,
        outbound_retry_base_seconds=0.05,
        outbound_retry_cap_seconds=0.5,
        outbound_retry_max_seconds=3.0,
        outbound_window_grace_seconds=0.5,
        **overrides,
    )


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def outbound(settings_env: dict[str, str], simulator: Simulator) -> AsyncIterator[str]:
    async with serve(create_app(outbound_settings(settings_env, simulator.url))) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def publisher(topics_ready: CommonSettings) -> AsyncIterator[EventPublisher]:
    broker = make_broker(topics_ready, client_id="outbound-tests")
    await broker.start()
    try:
        yield EventPublisher(broker, topics_ready)
    finally:
        await broker.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def results(topics_ready: CommonSettings) -> AsyncIterator[Results]:
    async with TopicReader(topics_ready, topics.OUTBOUND_RESULTS) as reader:
        yield Results(reader)


@pytest_asyncio.fixture(loop_scope="session")
async def api(outbound: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=outbound, timeout=30.0) as client:
        yield client


class Results:
    """send.accepted / send.rejected records seen on outbound.results.v1, by request id."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader
        self.seen: list[dict[str, Any]] = []

    async def wait_for(self, *request_ids: str, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = {r["payload"]["request_id"]: r for r in self.seen if r["payload"]["request_id"] in request_ids}
            if len(found) == len(request_ids) or asyncio.get_running_loop().time() > deadline:
                return found
            self.seen.extend(await self.reader.read(1, timeout=0.5))

    def count(self, request_id: str) -> int:
        return sum(1 for r in self.seen if r["payload"]["request_id"] == request_id)


def send_requested(
    tenant: SeededTenant,
    wa_id: str,
    message: TextMessage | TemplateMessage,
    *,
    request_id: str | None = None,
    phone_number_id: str | None = None,
) -> SendRequestedEvent:
    return SendRequestedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=SendRequested(
            request_id=request_id or f"req_{uuid.uuid4().hex[:12]}",
            phone_number_id=phone_number_id or tenant.phone_number_id,
            wa_id=wa_id,
            message=message,
            requested_by="agent:test",
        ),
    )


def goodbye(sentence: str = "and thank you for your order", **parameters: str) -> TemplateMessage:
    return TemplateMessage(name="open_template", language="en", parameters=parameters or {"SENTENCE": sentence})


def customer_wrote(tenant: SeededTenant, wa_id: str, wamid: str, at: datetime | None = None) -> MessageReceivedEvent:
    return MessageReceivedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=MessageReceived(
            wamid=wamid,
            phone_number_id=tenant.phone_number_id,
            waba_id=tenant.waba_id,
            wa_id=wa_id,
            type="text",
            timestamp=at or datetime.now(UTC),
            content=TextContent(body="hello"),
        ),
    )


def contact_changed(tenant: SeededTenant, wa_id: str, *, version: int, blacklisted: bool) -> ContactChangedEvent:
    now = datetime.now(UTC)
    return ContactChangedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=ContactSnapshot(
            contact_id=f"ct_{wa_id}",
            wa_id=wa_id,
            phone_e164=f"+{wa_id}",
            blacklisted=blacklisted,
            deleted=blacklisted,
            updated_at=now,
            version=version,
        ),
    )


async def recipient_state(api: httpx.AsyncClient, tenant: SeededTenant, wa_id: str) -> dict[str, Any]:
    r = await api.get(f"/v1/recipients/{tenant.phone_number_id}/{wa_id}", headers=tenant.auth)
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()
    return state


async def wait_until(api: httpx.AsyncClient, tenant: SeededTenant, wa_id: str, **expected: Any) -> None:
    """Waits until outbound shows what the test published (it learns from events only)."""
    for _ in range(200):
        state = await recipient_state(api, tenant, wa_id)
        if all(state[k] == v for k, v in expected.items()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"outbound never saw {expected} for {wa_id}: {state}")


async def open_window(
    api: httpx.AsyncClient, simulator: Simulator, publisher: EventPublisher, tenant: SeededTenant, wa_id: str
) -> str:
    """The customer writes: the simulator (playing WhatsApp) and outbound (from wa.inbound.v1) both see it."""
    written = await simulator.client.customer_message(tenant.phone_number_id, wa_id, text="hello", wait=False)
    await publisher.publish(customer_wrote(tenant, wa_id, written.wamid))
    await wait_until(api, tenant, wa_id, window_open=True)
    return written.wamid


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def outbound_db(settings_env: dict[str, str]) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """Outbound's own database, for tests that wait on what outbound recorded."""
    settings = settings_for(CommonSettings, settings_env)
    client = make_mongo_client(settings)
    try:
        yield service_database(client, settings, "waflow_outbound")
    finally:
        await client.close()


def chat_read(tenant: SeededTenant, wa_id: str, last_inbound_wamid: str) -> ChatReadEvent:
    return ChatReadEvent.new(
        tenant_id=tenant.tenant_id,
        payload=ChatRead(
            chat_id=f"ch_{wa_id}",
            phone_number_id=tenant.phone_number_id,
            wa_id=wa_id,
            read_by="agent:test",
            last_inbound_wamid=last_inbound_wamid,
        ),
    )


async def read_handled(db: AsyncDatabase[dict[str, Any]], tenant: SeededTenant, wamid: str) -> dict[str, Any]:
    """Waits until outbound has finished with a read receipt (called WhatsApp, or decided not to)."""
    for _ in range(400):
        done = await db["requests"].find_one({"_id": f"{tenant.tenant_id}:read:{wamid}", "state": "done"})
        if done is not None:
            return done
        await asyncio.sleep(0.05)
    raise AssertionError(f"outbound never finished the read receipt of {wamid}")
