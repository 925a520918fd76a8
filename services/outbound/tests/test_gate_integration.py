"""Every kind of call outbound can make to WhatsApp passes one gate: a sweep over all of them, against a
blacklisted customer and against a closed 24-hour window (real Kafka, the database server, the simulator over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase
from waflow_common.events.outbound import TextMessage
from waflow_common.kafka import EventPublisher
from waflow_outbound.domain import CALL_KINDS, CallKind
from waflow_testing.fixtures import SeededTenant

from .conftest import (
    Results,
    Simulator,
    chat_read,
    contact_changed,
    customer_wrote,
    goodbye,
    new_wa_id,
    open_window,
    read_handled,
    recipient_state,
    send_requested,
    wait_until,
)

pytestmark = pytest.mark.integration

Sweep = Callable[[CallKind], Awaitable[str]]


def sweeper(
    publisher: EventPublisher,
    results: Results,
    db: AsyncDatabase[dict[str, Any]],
    tenant: SeededTenant,
    wa_id: str,
    wamid: str,
) -> Sweep:
    """Asks outbound for one call of a kind and returns what it decided: "accepted" or the reason it refused."""

    async def send(command: Any) -> str:
        await publisher.publish(command)
        found = await results.wait_for(command.payload.request_id)
        result = found[command.payload.request_id]
        return "accepted" if result["event_type"] == "send.accepted" else str(result["payload"]["reason"])

    async def one(kind: CallKind) -> str:
        match kind:
            case "text":
                return await send(send_requested(tenant, wa_id, TextMessage(body="are you there?")))
            case "template":
                return await send(send_requested(tenant, wa_id, goodbye()))
            case "read":
                await publisher.publish(chat_read(tenant, wa_id, wamid))
                done = await read_handled(db, tenant, wamid)
                return str(done.get("outcome"))

    return one


async def sweep_all(one: Sweep) -> dict[str, str]:
    return {kind: await one(kind) for kind in CALL_KINDS}


# What each kind of call gets. A new kind of call must say here what it gets, or this test fails.
BLACKLISTED: dict[str, str] = {"text": "blacklisted", "template": "blacklisted", "read": "blacklisted"}
# Outside the window WhatsApp takes only templates: free text would be refused (131047), and although Meta
# would still take a read receipt (for 30 days), ours is the rule that nothing but an approved template an
# agent chose reaches a customer whose window has closed.
WINDOW_CLOSED: dict[str, str] = {"text": "window_closed", "template": "accepted", "read": "window_closed"}


def test_every_kind_of_call_is_swept() -> None:
    assert set(BLACKLISTED) == set(CALL_KINDS) == set(WINDOW_CLOSED)


async def test_a_blacklisted_customer_gets_no_call_of_any_kind(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    outbound_db: AsyncDatabase[dict[str, Any]],
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant = tenants[0]
    wa_id = new_wa_id()
    # The customer wrote (the window is open), then an agent deleted the contact.
    wamid = await open_window(api, simulator, publisher, tenant, wa_id)
    await publisher.publish(contact_changed(tenant, wa_id, version=2, blacklisted=True))
    await wait_until(api, tenant, wa_id, blacklisted=True)

    decided = await sweep_all(sweeper(publisher, results, outbound_db, tenant, wa_id, wamid))

    assert [(s.type, s.body) for s in await simulator.client.sent(tenant.phone_number_id, to=wa_id)] == []
    assert decided == BLACKLISTED


async def test_a_closed_window_lets_only_a_template_through(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    outbound_db: AsyncDatabase[dict[str, Any]],
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant = tenants[0]
    wa_id = new_wa_id()
    wrote_at = datetime.now(UTC) - timedelta(hours=25)
    written = await simulator.client.customer_message(
        tenant.phone_number_id, wa_id, text="hello", timestamp=int(wrote_at.timestamp()), wait=False
    )
    await publisher.publish(customer_wrote(tenant, wa_id, written.wamid, at=wrote_at))
    for _ in range(200):  # outbound has seen the (old) message: its window is known, and closed
        state = await recipient_state(api, tenant, wa_id)
        if state["window_expires_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert state["window_expires_at"] is not None
    assert state["window_open"] is False

    decided = await sweep_all(sweeper(publisher, results, outbound_db, tenant, wa_id, written.wamid))

    assert [s.type for s in await simulator.client.sent(tenant.phone_number_id, to=wa_id)] == ["template"]
    assert decided == WINDOW_CLOSED
