"""Contacts against the real Kafka and database server: REST, events consumed, contact.changed produced."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from waflow_common import topics
from waflow_common.events.conversation import ChatOpened, ChatOpenedEvent
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent, TextContent
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import SeededTenant, TopicReader

pytestmark = pytest.mark.integration

Publish = Callable[..., Any]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def message(
    tenant: SeededTenant, wa_id: str, at: datetime, *, profile_name: str | None = "Maria", wamid: str | None = None
) -> MessageReceivedEvent:
    return MessageReceivedEvent.new(
        tenant_id=tenant.tenant_id,
        occurred_at=at,
        payload=MessageReceived(
            wamid=wamid or f"wamid.{uuid.uuid4().hex}",
            phone_number_id=tenant.phone_number_id,
            waba_id=tenant.waba_id,
            wa_id=wa_id,
            profile_name=profile_name,
            type="text",
            timestamp=at,
            content=TextContent(body="hola"),
        ),
    )


def chat_opened(tenant: SeededTenant, wa_id: str) -> ChatOpenedEvent:
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


def of_wa_id(wa_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda value: value.get("payload", {}).get("wa_id") == wa_id


def unique_wa_id(prefix: str = "3461") -> str:
    """A valid Spanish mobile (+34 6…) nobody else in this run uses."""
    return prefix + str(uuid.uuid4().int)[:7]


async def create(api: httpx.AsyncClient, phone: str, **body: Any) -> dict[str, Any]:
    response = await api.post("/v1/contacts", json={"phone": phone, **body})
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


async def listing(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing, following the cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = await api.get("/v1/contacts", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# --- contacts from conversations ---------------------------------------------------------------------------


async def test_a_message_creates_the_contact_once_and_redelivery_changes_nothing(
    api_a: httpx.AsyncClient, publish: Publish, changes: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    wa_id = unique_wa_id()
    event = message(tenants[0], wa_id, T0, profile_name="María")
    await publish(event)
    (changed,) = await changes.read(1, where=of_wa_id(wa_id))
    assert changed["event_type"] == "contact.changed"
    assert changed["causation_id"] == str(event.event_id)
    snapshot = changed["payload"]
    assert snapshot["version"] == 1
    assert snapshot["profile_name"] == "María"
    assert snapshot["phone_e164"] == f"+{wa_id}"
    assert snapshot["first_seen_at"] == snapshot["last_seen_at"] == "2026-03-01T09:00:00Z"

    await publish(event)  # redelivered
    await publish(event)
    marker = unique_wa_id()
    await publish(message(tenants[0], marker, T0))
    assert len(await changes.read(1, where=of_wa_id(marker))) == 1
    contact = (await api_a.get(f"/v1/contacts/by-phone/{wa_id}")).json()
    assert contact["version"] == 1
    assert contact["contact_id"] == snapshot["contact_id"]
    assert await changes.read(1, timeout=0.5, where=of_wa_id(wa_id)) == []


async def test_later_messages_refresh_seen_times_and_profile_but_never_the_agents_name(
    api_a: httpx.AsyncClient, publish: Publish, changes: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    wa_id = unique_wa_id()
    await publish(message(tenants[0], wa_id, T0, profile_name="Mari"))
    (first,) = await changes.read(1, where=of_wa_id(wa_id))
    contact_id = first["payload"]["contact_id"]
    renamed = await api_a.patch(f"/v1/contacts/{contact_id}", json={"name": "María López"})
    assert renamed.status_code == 200, renamed.text
    await publish(message(tenants[0], wa_id, T0 + timedelta(hours=2), profile_name="Mari L."))
    await publish(message(tenants[0], wa_id, T0 - timedelta(days=1), profile_name="Old profile"))
    events = await changes.read(3, where=of_wa_id(wa_id))
    assert [e["payload"]["version"] for e in events] == [2, 3, 4]
    latest = events[-1]["payload"]
    assert latest["name"] == "María López"
    assert latest["profile_name"] == "Mari L."  # the older message does not bring back an older profile name
    assert latest["first_seen_at"] == "2026-02-28T09:00:00Z"
    assert latest["last_seen_at"] == "2026-03-01T11:00:00Z"
    assert (await api_a.get(f"/v1/contacts/{contact_id}")).json() == latest


async def test_a_chat_opened_by_an_agent_creates_the_contact_if_missing(
    api_a: httpx.AsyncClient, publish: Publish, changes: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    wa_id = unique_wa_id()
    await publish(chat_opened(tenants[0], wa_id))
    (created,) = await changes.read(1, where=of_wa_id(wa_id))
    assert created["payload"]["version"] == 1
    await publish(chat_opened(tenants[0], wa_id))  # an existing contact is left as it is
    marker = unique_wa_id()
    await publish(chat_opened(tenants[0], marker))
    assert len(await changes.read(1, where=of_wa_id(marker))) == 1
    assert (await api_a.get(f"/v1/contacts/by-phone/+{wa_id}")).json()["version"] == 1


async def test_a_poison_record_is_dead_lettered_and_the_consumer_goes_on(
    topics_ready: CommonSettings, publish: Publish, changes: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    poison = json.dumps({"event_type": "message.received", "tenant_id": tenants[0].tenant_id, "payload": {}})
    async with TopicReader(topics_ready, topics.dlq(topics.INBOUND)) as dlq:
        producer = AIOKafkaProducer(bootstrap_servers=topics_ready.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topics_ready.topic(topics.INBOUND), poison.encode(), key=b"poison")
        finally:
            await producer.stop()
        # Other services' consumers of wa.inbound.v1 running in the same session dead-letter it too: contacts' own.
        letters = await dlq.read(1, where=lambda v: v.get("value") == poison and v.get("consumer") == "contacts")
    assert len(letters) == 1
    assert "invalid event" in letters[0]["error"]
    wa_id = unique_wa_id()
    await publish(message(tenants[0], wa_id, T0))
    assert len(await changes.read(1, where=of_wa_id(wa_id))) == 1


async def test_a_blacklisted_numbers_new_message_is_recorded_and_the_blacklist_stays(
    api_a: httpx.AsyncClient, publish: Publish, changes: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    contact = await create(api_a, f"+{unique_wa_id()}")
    deleted = await api_a.delete(f"/v1/contacts/{contact['contact_id']}", headers={"X-Actor": "agent:giulia"})
    assert deleted.json()["blacklisted"] is True
    await publish(message(tenants[0], contact["wa_id"], T0 + timedelta(days=3), profile_name="Still me"))
    events = await changes.read(3, where=of_wa_id(contact["wa_id"]))
    latest = events[-1]["payload"]
    assert latest["last_seen_at"] == "2026-03-04T09:00:00Z"
    assert latest["profile_name"] == "Still me"
    assert latest["deleted"] is True
    assert latest["blacklisted"] is True
    assert latest["deleted_by"] == "agent:giulia"


# --- master data ---------------------------------------------------------------------------------------------


async def test_create_by_phone_normalises_every_common_format_to_one_contact(
    api_a: httpx.AsyncClient, changes: TopicReader
) -> None:
    first = await api_a.post("/v1/contacts", json={"phone": "+34 612 34 56 78", "name": "Lucía"})
    assert first.status_code == 201, first.text
    contact = first.json()
    assert (contact["phone_e164"], contact["wa_id"], contact["name"], contact["version"]) == (
        "+34612345678",
        "34612345678",
        "Lucía",
        1,
    )
    for same in ["0034612345678", "34612345678", "+34-612-345-678", "(+34) 612.345.678"]:
        again = await api_a.post("/v1/contacts", json={"phone": same, "name": "Someone else"})
        assert again.status_code == 200, (same, again.text)
        assert again.json() == contact
    (event,) = await changes.read(2, timeout=2, where=of_wa_id("34612345678"))
    assert event["payload"] == contact
    by_phone = await api_a.get("/v1/contacts/by-phone/0034 612 345 678")
    assert by_phone.json()["contact_id"] == contact["contact_id"]


async def test_mexican_mobiles_use_metas_wa_id_form(
    api_a: httpx.AsyncClient, publish: Publish, changes: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    await publish(message(tenants[0], "5215512345678", T0))
    (made,) = await changes.read(1, where=of_wa_id("5215512345678"))
    typed = await api_a.post("/v1/contacts", json={"phone": "+52 55 1234 5678"})
    assert typed.status_code == 200
    assert typed.json()["contact_id"] == made["payload"]["contact_id"]


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("+34 612", "too short"),
        ("+999 612345678", "country"),
        ("+1 555 765 4321", "not a valid number"),
        ("call me maybe", "only digits"),
        ("+3461234567890123", "too long"),
    ],
)
async def test_an_invalid_number_is_a_422_with_the_reason(api_a: httpx.AsyncClient, phone: str, reason: str) -> None:
    response = await api_a.post("/v1/contacts", json={"phone": phone})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_phone"
    assert error["details"]["field"] == "phone"
    assert reason in error["details"]["reason"]


async def test_dynamic_fields_are_validated_cleared_retired_and_restored(api_a: httpx.AsyncClient) -> None:
    definitions = [
        {"key": "city", "label": "City", "type": "text"},
        {"key": "orders", "label": "Orders", "type": "number"},
        {"key": "birthday", "label": "Birthday", "type": "date"},
        {"key": "newsletter", "label": "Newsletter", "type": "boolean"},
        {"key": "tier", "label": "Tier", "type": "choice", "options": ["gold", "silver"]},
    ]
    for definition in definitions:
        response = await api_a.post("/v1/fields", json=definition)
        assert response.status_code in (200, 201), response.text
    assert (await api_a.post("/v1/fields", json=definitions[0])).status_code == 200  # same again: idempotent
    conflict = await api_a.post("/v1/fields", json={"key": "orders", "label": "Orders", "type": "text"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "field_conflict"

    values = {"city": "Sevilla", "orders": 3, "birthday": "1990-04-12", "newsletter": True, "tier": "gold"}
    contact = await create(api_a, f"+{unique_wa_id()}", fields=values)
    assert contact["fields"] == values
    cid = contact["contact_id"]
    for bad, field in [
        ({"orders": "three"}, "fields.orders"),
        ({"birthday": "12/04/1990"}, "fields.birthday"),
        ({"newsletter": "yes"}, "fields.newsletter"),
        ({"tier": "bronze"}, "fields.tier"),
        ({"city": 5}, "fields.city"),
        ({"shoe_size": 42}, "fields.shoe_size"),
    ]:
        response = await api_a.patch(f"/v1/contacts/{cid}", json={"fields": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["details"]["field"] == field
    assert (await api_a.get(f"/v1/contacts/{cid}")).json()["fields"] == values

    cleared = await api_a.patch(f"/v1/contacts/{cid}", json={"fields": {"city": None, "orders": 4}})
    assert cleared.json()["fields"] == {k: v for k, v in ({**values, "orders": 4}).items() if k != "city"}

    retired = await api_a.delete("/v1/fields/tier")
    assert retired.json()["retired"] is True
    assert (await api_a.get(f"/v1/contacts/{cid}")).json()["fields"]["tier"] == "gold"  # kept
    refused = await api_a.patch(f"/v1/contacts/{cid}", json={"fields": {"tier": "silver"}})
    assert refused.status_code == 422
    assert "retired" in refused.json()["error"]["message"]
    restored = await api_a.post("/v1/fields", json=definitions[4])
    assert restored.status_code == 200
    assert restored.json()["retired"] is False
    assert (await api_a.patch(f"/v1/contacts/{cid}", json={"fields": {"tier": "silver"}})).json()["fields"][
        "tier"
    ] == "silver"
    assert (await api_a.delete("/v1/fields/nope")).status_code == 404
    bad_key = await api_a.post("/v1/fields", json={"key": "Bad Key", "label": "x", "type": "text"})
    assert bad_key.status_code == 422
    no_options = await api_a.post("/v1/fields", json={"key": "size", "label": "Size", "type": "choice"})
    assert no_options.status_code == 422


async def test_tags_are_normalised_idempotent_bounded_and_counted(
    api_a: httpx.AsyncClient, changes: TopicReader
) -> None:
    tag = f"camp-{uuid.uuid4().hex[:6]}"
    one = await create(api_a, f"+{unique_wa_id()}")
    two = await create(api_a, f"+{unique_wa_id()}")
    tagged = await api_a.post(
        f"/v1/contacts/{one['contact_id']}/tags", json={"tags": [f"  {tag.upper()} ", "VIP Customer"]}
    )
    assert tagged.json()["tags"] == [tag, "vip-customer"]
    version = tagged.json()["version"]
    again = await api_a.post(f"/v1/contacts/{one['contact_id']}/tags", json={"tags": [tag]})
    assert again.json()["version"] == version  # nothing changed, no new version
    await api_a.post(f"/v1/contacts/{two['contact_id']}/tags", json={"tags": [tag]})
    catalogue = {t["tag"]: t["contacts"] for t in (await api_a.get("/v1/tags")).json()["items"]}
    assert catalogue[tag] == 2
    too_long = await api_a.post(f"/v1/contacts/{one['contact_id']}/tags", json={"tags": ["x" * 41]})
    assert too_long.status_code == 422
    assert too_long.json()["error"]["details"]["field"] == "tags"
    too_many = await api_a.post(f"/v1/contacts/{one['contact_id']}/tags", json={"tags": [f"t{i}" for i in range(49)]})
    assert too_many.status_code == 422
    removed = await api_a.delete(f"/v1/contacts/{one['contact_id']}/tags/{tag.upper()}")
    assert removed.json()["tags"] == ["vip-customer"]
    removed_again = await api_a.delete(f"/v1/contacts/{one['contact_id']}/tags/{tag}")
    assert removed_again.json()["version"] == removed.json()["version"]
    catalogue = {t["tag"]: t["contacts"] for t in (await api_a.get("/v1/tags")).json()["items"]}
    assert catalogue[tag] == 1
    events = await changes.read(4, timeout=3, where=of_wa_id(one["wa_id"]))
    assert [e["payload"]["version"] for e in events] == [1, 2, 3]
    assert events[-1]["payload"]["tags"] == ["vip-customer"]


async def test_static_lists_members_renames_and_deletes(api_a: httpx.AsyncClient, changes: TopicReader) -> None:
    name = f"Winter {uuid.uuid4().hex[:6]}"
    made = await api_a.post("/v1/lists", json={"name": name})
    assert made.status_code == 201, made.text
    list_id = made.json()["list_id"]
    assert (await api_a.post("/v1/lists", json={"name": name.upper()})).status_code == 409
    people = [await create(api_a, f"+{unique_wa_id()}", name=f"Member {i}") for i in range(4)]
    ids = [p["contact_id"] for p in people]

    one = await api_a.put(f"/v1/lists/{list_id}/members/{ids[0]}")
    assert one.json()["lists"] == [{"list_id": list_id, "name": name}]
    assert (await api_a.put(f"/v1/lists/{list_id}/members/{ids[0]}")).json()["version"] == one.json()["version"]
    bulk = await api_a.post(f"/v1/lists/{list_id}/members", json={"contact_ids": [*ids, "c_missing"]})
    assert bulk.json() == {"changed": 3, "unchanged": 1, "not_found": ["c_missing"]}
    members = (await api_a.get(f"/v1/lists/{list_id}/members")).json()["items"]
    assert sorted(m["contact_id"] for m in members) == sorted(ids)
    assert (await api_a.get(f"/v1/lists/{list_id}")).json()["members"] == 4
    assert (await api_a.get(f"/v1/contacts/{ids[1]}/lists")).json()["items"] == [{"list_id": list_id, "name": name}]

    renamed = await api_a.patch(f"/v1/lists/{list_id}", json={"name": f"{name} (renamed)"})
    assert renamed.json()["name"] == f"{name} (renamed)"
    snapshots = await changes.read(
        1,
        where=lambda v: (
            v["payload"]["contact_id"] == ids[2]
            and v["payload"]["lists"]
            and v["payload"]["lists"][0]["name"].endswith("(renamed)")
        ),
    )
    assert len(snapshots) == 1  # consumers of contacts.v1 learn the new name from every member's snapshot

    removed = await api_a.post(f"/v1/lists/{list_id}/members/remove", json={"contact_ids": ids[:2]})
    assert removed.json() == {"changed": 2, "unchanged": 0, "not_found": []}
    assert (await api_a.delete(f"/v1/lists/{list_id}/members/{ids[2]}")).json()["lists"] == []
    assert [m["contact_id"] for m in (await api_a.get(f"/v1/lists/{list_id}/members")).json()["items"]] == [ids[3]]

    assert (await api_a.delete(f"/v1/lists/{list_id}")).status_code == 204
    assert (await api_a.get(f"/v1/lists/{list_id}")).status_code == 404
    assert (await api_a.get(f"/v1/contacts/{ids[3]}")).json()["lists"] == []
    assert all(item["list_id"] != list_id for item in (await api_a.get("/v1/lists")).json()["items"])
    assert (await api_a.put(f"/v1/lists/{list_id}/members/{ids[0]}")).status_code == 404


async def test_search_filters_and_cursor_pages(api_a: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:5]
    names = ["José Álvarez", "JOSEFINA ruiz", "Ana Pérez", "Zoë Müller", "André O'Brien", None]
    made = [await create(api_a, f"+{unique_wa_id('3469')}", **({"name": f"{n} {run}"} if n else {})) for n in names]
    tag = f"s-{run}"
    for contact in made[:4]:
        await api_a.post(f"/v1/contacts/{contact['contact_id']}/tags", json={"tags": [tag]})

    def names_of(items: list[dict[str, Any]]) -> list[str | None]:
        return [i["name"] for i in items]

    assert names_of(await listing(api_a, q=f"jose {run}")) == []  # the run id is not next to "jose"
    found = names_of(await listing(api_a, q="jose"))
    assert f"José Álvarez {run}" in found
    assert f"JOSEFINA ruiz {run}" in found
    assert f"Zoë Müller {run}" in names_of(await listing(api_a, q="zoe muller"))
    assert f"André O'Brien {run}" in names_of(await listing(api_a, q="obrien"))
    wa = made[2]["wa_id"]  # 34 69x xxx xxx
    for phone in [f"+{wa}", f"+34 {wa[2:5]} {wa[5:8]} {wa[8:]}", f"({wa[2:5]}) {wa[5:8]}-{wa[8:]}", wa[4:9]]:
        assert made[2]["contact_id"] in [i["contact_id"] for i in await listing(api_a, q=phone)], phone

    tagged = await listing(api_a, tag=tag, limit=1)
    assert names_of(tagged) == [
        f"Ana Pérez {run}",
        f"José Álvarez {run}",
        f"JOSEFINA ruiz {run}",
        f"Zoë Müller {run}",
    ]
    assert names_of(await listing(api_a, tag=tag, q="ana")) == [f"Ana Pérez {run}"]

    everything = await listing(api_a, limit=7)
    ids = [i["contact_id"] for i in everything]
    assert len(ids) == len(set(ids))
    assert {c["contact_id"] for c in made} <= set(ids)
    assert ids == [i["contact_id"] for i in await listing(api_a, limit=200)]  # same order whatever the page size
    assert (await api_a.get("/v1/contacts", params={"cursor": "not-a-cursor"})).status_code == 422
    assert (await api_a.get("/v1/contacts", params={"limit": 0})).status_code == 422


async def test_delete_blacklists_hides_and_restore_is_explicit(api_a: httpx.AsyncClient, changes: TopicReader) -> None:
    run = uuid.uuid4().hex[:6]
    contact = await create(api_a, f"+{unique_wa_id()}", name=f"Leaving {run}")
    cid = contact["contact_id"]
    deleted = await api_a.delete(f"/v1/contacts/{cid}", headers={"X-Actor": "agent:ana"})
    assert deleted.status_code == 200
    body = deleted.json()
    assert (body["deleted"], body["blacklisted"], body["deleted_by"]) == (True, True, "agent:ana")
    assert body["deleted_at"] is not None
    again = await api_a.delete(f"/v1/contacts/{cid}", headers={"X-Actor": "agent:other"})
    assert again.json() == body  # deleting twice keeps the first who and when
    assert await listing(api_a, q=run) == []
    assert [c["contact_id"] for c in await listing(api_a, q=run, deleted=True)] == [cid]
    assert (await api_a.get(f"/v1/contacts/{cid}")).json()["blacklisted"] is True  # the record is kept
    events = await changes.read(2, where=of_wa_id(contact["wa_id"]))
    assert events[-1]["payload"]["blacklisted"] is True

    restored = await api_a.post(f"/v1/contacts/{cid}/restore")
    assert (restored.json()["deleted"], restored.json()["blacklisted"], restored.json()["deleted_by"]) == (
        False,
        False,
        None,
    )
    assert [c["contact_id"] for c in await listing(api_a, q=run)] == [cid]
    (event,) = await changes.read(1, where=of_wa_id(contact["wa_id"]))
    assert event["payload"]["blacklisted"] is False
    assert event["payload"]["version"] == 3


# --- tenants and bad input -----------------------------------------------------------------------------------


async def test_another_tenants_contact_or_list_is_a_404_like_a_missing_one(
    api_a: httpx.AsyncClient, api_b: httpx.AsyncClient
) -> None:
    contact = await create(api_a, f"+{unique_wa_id()}", name=f"Private {uuid.uuid4().hex[:6]}")
    missing = await api_b.get("/v1/contacts/c_000000000000000000000000")
    foreign = await api_b.get(f"/v1/contacts/{contact['contact_id']}")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    for call in [
        api_b.patch(f"/v1/contacts/{contact['contact_id']}", json={"name": "x"}),
        api_b.delete(f"/v1/contacts/{contact['contact_id']}"),
        api_b.post(f"/v1/contacts/{contact['contact_id']}/tags", json={"tags": ["x"]}),
        api_b.get(f"/v1/contacts/by-phone/{contact['phone_e164']}"),
    ]:
        assert (await call).status_code == 404
    assert await listing(api_b, q=contact["name"]) == []
    a_list = (await api_a.post("/v1/lists", json={"name": f"A only {uuid.uuid4().hex[:6]}"})).json()
    assert (await api_b.get(f"/v1/lists/{a_list['list_id']}")).status_code == 404
    assert (await api_b.put(f"/v1/lists/{a_list['list_id']}/members/{contact['contact_id']}")).status_code == 404
    # B's own contact for the same number is B's, not A's.
    mine = await create(api_b, contact["phone_e164"])
    assert mine["contact_id"] != contact["contact_id"]
    assert mine["name"] is None
    assert (await api_a.get(f"/v1/contacts/{contact['contact_id']}")).json()["name"] == contact["name"]


async def test_bad_requests_answer_clear_json_errors(contacts_url: str, api_a: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=contacts_url) as anonymous:
        assert (await anonymous.get("/v1/contacts")).status_code == 401
        wrong = await anonymous.get("/v1/contacts", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "unauthorized"
    for response, status in [
        (await api_a.post("/v1/contacts", json={}), 422),
        (await api_a.post("/v1/contacts", json={"phone": "+34612345678", "colour": "red"}), 422),
        (await api_a.post("/v1/contacts", content=b"{not json", headers={"Content-Type": "application/json"}), 400),
        (await api_a.patch("/v1/contacts/c_000000000000000000000000", json={"name": "x"}), 404),
        (await api_a.post("/v1/contacts/c_000000000000000000000000/restore"), 404),
        (await api_a.put("/v1/contacts"), 405),
        (await api_a.post("/v1/lists", json={"name": "   "}), 422),
        (await api_a.post("/v1/lists/l_nope/members", json={"contact_ids": []}), 422),
        (await api_a.get("/v1/lists/l_nope/members"), 404),
        (await api_a.post("/v1/fields", json={"key": "k", "label": "K", "type": "colour"}), 422),
    ]:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"]


async def test_openapi_describes_every_route_with_a_summary_and_examples(contacts_url: str) -> None:
    async with httpx.AsyncClient(base_url=contacts_url) as client:
        spec = (await client.get("/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), (method, path)
            if path.startswith("/v1"):
                assert (
                    "200" in operation["responses"]
                    or "201" in operation["responses"]
                    or "204" in operation["responses"]
                )
    schemas = spec["components"]["schemas"]
    for name in [
        "Contact",
        "ContactCreate",
        "ContactUpdate",
        "ContactPage",
        "FieldDefinitionIn",
        "ListOut",
        "BulkResult",
        "TagCatalogue",
    ]:
        assert schemas[name].get("examples"), name


async def test_concurrent_changes_to_one_contact_lose_nothing(api_a: httpx.AsyncClient, changes: TopicReader) -> None:
    contact = await create(api_a, f"+{unique_wa_id()}")
    tags = [f"c{i}" for i in range(20)]
    responses = await asyncio.gather(
        *(api_a.post(f"/v1/contacts/{contact['contact_id']}/tags", json={"tags": [t]}) for t in tags)
    )
    assert all(r.status_code == 200 for r in responses)
    stored = (await api_a.get(f"/v1/contacts/{contact['contact_id']}")).json()
    assert sorted(stored["tags"]) == sorted(tags)
    assert stored["version"] == 21
    # At least once: concurrent relays may publish a parked event twice, always under its one event_id, which is
    # what subscribers de-duplicate by. Exactly one event id per version, every version present.
    events = await changes.read(100, timeout=8, where=of_wa_id(contact["wa_id"]))
    versions = {e["event_id"]: e["payload"]["version"] for e in events}
    assert sorted(versions.values()) == list(range(1, 22))
