"""Outbound and the customer's identity, on the real Kafka, the database server and the WhatsApp simulator: the
blacklist covers every form of a number and every id of a customer, and BSUID-only customers are told apart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
from waflow_common.events.contacts import ContactChangedEvent, ContactSnapshot
from waflow_common.events.outbound import SendRequested, SendRequestedEvent, TextMessage
from waflow_common.kafka import EventPublisher
from waflow_testing.fixtures import SeededTenant

from .conftest import Results, Simulator, goodbye, send_requested, wait_until

pytestmark = pytest.mark.integration


def _mexican() -> tuple[str, str]:
    """One Mexican mobile in both of its forms: with the 1 after 52 (Meta's) and without (E.164)."""
    national = "55" + str(uuid.uuid4().int)[:8]
    return "521" + national, "52" + national


def _brazilian() -> tuple[str, str]:
    """One Brazilian mobile with and without its ninth digit."""
    subscriber = "9" + str(uuid.uuid4().int)[:7]
    return f"55119{subscriber}", f"5511{subscriber}"


def _bsuid() -> str:
    return "US." + str(uuid.uuid4().int)[:20]


def _deleted(tenant: SeededTenant, *, wa_id: str = "", user_id: str | None = None) -> ContactChangedEvent:
    return ContactChangedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=ContactSnapshot(
            contact_id=f"c_{uuid.uuid4().hex[:12]}",
            wa_id=wa_id,
            user_id=user_id,
            phone_e164=f"+{wa_id}" if wa_id else None,
            deleted=True,
            blacklisted=True,
            updated_at=datetime.now(UTC),
            version=3,
        ),
    )


def _to_bsuid(tenant: SeededTenant, user_id: str, message: TextMessage | None = None) -> SendRequestedEvent:
    return SendRequestedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=SendRequested(
            request_id=f"req_{uuid.uuid4().hex[:12]}",
            phone_number_id=tenant.phone_number_id,
            wa_id="",
            user_id=user_id,
            message=message or goodbye(),
            requested_by="agent:test",
        ),
    )


@pytest.mark.parametrize(("deleted_as", "sent_as"), [_mexican(), _mexican()[::-1], _brazilian(), _brazilian()[::-1]])
async def test_a_contact_deleted_in_one_form_of_its_number_is_never_messaged_in_another(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
    deleted_as: str,
    sent_as: str,
) -> None:
    tenant = tenants[0]
    await publisher.publish(_deleted(tenant, wa_id=deleted_as))
    await wait_until(api, tenant, deleted_as, blacklisted=True)
    assert (await api.get(f"/v1/recipients/{tenant.phone_number_id}/{sent_as}", headers=tenant.auth)).json()[
        "blacklisted"
    ]

    command = send_requested(tenant, sent_as, goodbye())
    await publisher.publish(command)
    found = await results.wait_for(command.payload.request_id)

    assert found[command.payload.request_id]["payload"]["reason"] == "blacklisted"
    for form in (deleted_as, sent_as):
        assert await simulator.client.sent(tenant.phone_number_id, to=form) == []


async def test_two_bsuid_only_customers_never_share_a_blacklist_entry_or_a_send(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant = tenants[0]
    deleted, other = _bsuid(), _bsuid()
    await publisher.publish(_deleted(tenant, user_id=deleted))
    await wait_until(api, tenant, deleted, blacklisted=True)
    assert not (await api.get(f"/v1/recipients/{tenant.phone_number_id}/{other}", headers=tenant.auth)).json()[
        "blacklisted"
    ]

    refused = [_to_bsuid(tenant, deleted), _to_bsuid(tenant, deleted, TextMessage(body="still there?"))]
    sent = _to_bsuid(tenant, other)
    await publisher.publish_many([*refused, sent])
    found = await results.wait_for(*(c.payload.request_id for c in [*refused, sent]))

    assert {found[c.payload.request_id]["payload"]["reason"] for c in refused} == {"blacklisted"}
    accepted = found[sent.payload.request_id]
    assert accepted["event_type"] == "send.accepted", accepted
    assert accepted["payload"]["user_id"] == other
    assert await simulator.client.sent(tenant.phone_number_id, to=deleted) == []
    [call] = await simulator.client.sent(tenant.phone_number_id, to=other)
    assert call.body["recipient"] == other
    assert "to" not in call.body
