"""Contacts and the customer's identity, on the real Kafka and database server: a BSUID joins the contact of a
customer known by phone, BSUID-only customers are told apart, and every form of a number is one contact."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from waflow_common.customers import wa_id_forms
from waflow_common.events.conversation import ChatOpened, ChatOpenedEvent
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent, TextContent
from waflow_testing.fixtures import SeededTenant, TopicReader

from .test_contacts_api import T0

pytestmark = pytest.mark.integration

Publish = Callable[..., Any]


def wrote(
    tenant: SeededTenant, wa_id: str, user_id: str | None = None, *, minutes: int = 0, username: str | None = None
) -> MessageReceivedEvent:
    at = T0 + timedelta(minutes=minutes)
    return MessageReceivedEvent.new(
        tenant_id=tenant.tenant_id,
        occurred_at=at,
        payload=MessageReceived(
            wamid=f"wamid.{uuid.uuid4().hex}",
            phone_number_id=tenant.phone_number_id,
            waba_id=tenant.waba_id,
            wa_id=wa_id,
            user_id=user_id,
            username=username,
            profile_name="Maria",
            type="text",
            timestamp=at,
            content=TextContent(body="hola"),
        ),
    )


def opened(tenant: SeededTenant, wa_id: str) -> ChatOpenedEvent:
    return ChatOpenedEvent.new(
        tenant_id=tenant.tenant_id,
        payload=ChatOpened(
            chat_id=f"ch_{wa_id}",
            phone_number_id=tenant.phone_number_id,
            wa_id=wa_id,
            phone_e164=f"+{wa_id}",
            opened_by="agent:giulia",
        ),
    )


def bsuid() -> str:
    return "ES." + uuid.uuid4().hex


def of_customer(wa_id: str = "", user_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(value: dict[str, Any]) -> bool:
        payload = value.get("payload", {})
        return bool((wa_id and payload.get("wa_id") == wa_id) or (user_id and payload.get("user_id") == user_id))

    return match


async def test_a_customer_who_wrote_by_phone_keeps_their_contact_when_a_bsuid_appears(
    publish: Publish, changes: TopicReader, api_a: httpx.AsyncClient, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    tenant = tenants[0]
    wa_id, user_id = "3461" + str(uuid.uuid4().int)[:7], bsuid()
    await publish(wrote(tenant, wa_id))
    (first,) = await changes.read(1, where=of_customer(wa_id))
    await publish(wrote(tenant, wa_id, user_id, minutes=1, username="maria.l"))
    (linked,) = await changes.read(1, where=of_customer(user_id=user_id))
    await publish(wrote(tenant, "", user_id, minutes=2))  # later Meta shows only the BSUID
    (later,) = await changes.read(1, where=lambda v: of_customer(user_id=user_id)(v) and v["payload"]["version"] == 3)

    contact_id = first["payload"]["contact_id"]
    assert linked["payload"]["contact_id"] == later["payload"]["contact_id"] == contact_id
    contact = (await api_a.get(f"/v1/contacts/{contact_id}")).json()
    assert (contact["wa_id"], contact["user_id"], contact["username"], contact["phone_e164"]) == (
        wa_id,
        user_id,
        "maria.l",
        "+" + wa_id,
    )
    assert contact["last_seen_at"] == (T0 + timedelta(minutes=2)).isoformat().replace("+00:00", "Z")


async def test_two_bsuid_only_customers_never_share_a_contact_or_a_blacklist_entry(
    publish: Publish, changes: TopicReader, api_a: httpx.AsyncClient, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    tenant = tenants[0]
    first, second = bsuid(), bsuid()
    await publish(wrote(tenant, "", first))
    await publish(wrote(tenant, "", second))
    made = await changes.read(2, where=lambda v: v["payload"].get("user_id") in (first, second))
    by_user = {m["payload"]["user_id"]: m["payload"] for m in made}
    assert set(by_user) == {first, second}
    assert by_user[first]["contact_id"] != by_user[second]["contact_id"]
    assert by_user[first]["wa_id"] == by_user[second]["wa_id"] == ""
    assert by_user[first]["phone_e164"] is None

    deleted = await api_a.delete(f"/v1/contacts/{by_user[first]['contact_id']}", headers={"X-Actor": "agent:giulia"})
    assert deleted.status_code == 200, deleted.text
    assert (await api_a.get(f"/v1/contacts/{by_user[first]['contact_id']}")).json()["blacklisted"] is True
    assert (await api_a.get(f"/v1/contacts/{by_user[second]['contact_id']}")).json()["blacklisted"] is False


@pytest.mark.parametrize(
    ("meta_form", "typed"),
    [
        ("5215512345670", "+52 55 1234 5670"),
        ("525512345671", "+52 1 55 1234 5671"),
        ("551187654320", "+55 11 98765 4320"),
        ("5511987654321", "+55 11 8765 4321"),
    ],
)
async def test_a_chat_opened_with_another_form_of_the_number_finds_the_customers_contact(
    publish: Publish,
    changes: TopicReader,
    api_a: httpx.AsyncClient,
    tenants: tuple[SeededTenant, SeededTenant],
    meta_form: str,
    typed: str,
) -> None:
    tenant = tenants[0]
    await publish(wrote(tenant, meta_form))
    (made,) = await changes.read(1, where=of_customer(meta_form))
    contact_id = made["payload"]["contact_id"]

    other_form = next(f for f in wa_id_forms(meta_form) if f != meta_form)
    await publish(opened(tenant, other_form))  # what conversation announces when an agent types that form
    assert await changes.read(1, timeout=3, where=of_customer(other_form)) == []
    assert (await api_a.get(f"/v1/contacts/by-phone/{typed}")).json()["contact_id"] == contact_id
    created = await api_a.post("/v1/contacts", json={"phone": typed})
    assert (created.status_code, created.json()["contact_id"]) == (200, contact_id)
