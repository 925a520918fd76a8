"""Outbound against the real Kafka, the database server and the WhatsApp simulator: what reaches WhatsApp, and
what does not."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from waflow_common import topics
from waflow_common.events.conversation import ChatRead, ChatReadEvent
from waflow_common.events.outbound import TemplateMessage, TextMessage
from waflow_common.kafka import EventPublisher
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import SeededTenant, TopicReader

from .conftest import (
    Results,
    Simulator,
    contact_changed,
    goodbye,
    new_wa_id,
    open_window,
    send_requested,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_template_is_sent_with_the_agents_placeholder_mapped_to_metas_parameter(
    outbound: str, simulator: Simulator, publisher: EventPublisher, results: Results, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    command = send_requested(tenant_a, wa_id, goodbye("and thank you for your order"))
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    result = found[command.payload.request_id]
    assert result["event_type"] == "send.accepted", result
    assert result["causation_id"] == str(command.event_id)
    assert result["correlation_id"] == command.correlation_id
    sent = await simulator.client.sent(tenant_a.phone_number_id, to=wa_id)
    assert [s.wamid for s in sent] == [result["payload"]["wamid"]]
    assert sent[0].body["template"] == {
        "name": "open_template",
        "language": {"code": "en"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "and thank you for your order"}]}],
    }
    assert sent[0].body["biz_opaque_callback_data"] == command.payload.request_id


async def test_a_blacklisted_recipient_never_reaches_whatsapp(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    await open_window(api, simulator, publisher, tenant_a, wa_id)
    await publisher.publish(contact_changed(tenant_a, wa_id, version=2, blacklisted=True))
    # An older snapshot arriving late must not lift the blacklist.
    await publisher.publish(contact_changed(tenant_a, wa_id, version=1, blacklisted=False))
    await wait_until(api, tenant_a, wa_id, blacklisted=True)

    template = send_requested(tenant_a, wa_id, goodbye())
    text = send_requested(tenant_a, wa_id, TextMessage(body="are you there?"))
    await publisher.publish_many([template, text])
    found = await results.wait_for(template.payload.request_id, text.payload.request_id)

    assert {r["payload"]["reason"] for r in found.values()} == {"blacklisted"}
    assert await simulator.client.sent(tenant_a.phone_number_id, to=wa_id) == []


async def test_free_form_outside_the_window_is_refused_before_the_call(
    outbound: str, simulator: Simulator, publisher: EventPublisher, results: Results, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    command = send_requested(tenant_a, wa_id, TextMessage(body="hello?"))
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    assert found[command.payload.request_id]["payload"]["reason"] == "window_closed"
    assert await simulator.client.sent(tenant_a.phone_number_id, to=wa_id) == []


async def test_free_form_inside_the_window_is_sent(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    wamid = await open_window(api, simulator, publisher, tenant_a, wa_id)
    command = send_requested(tenant_a, wa_id, TextMessage(body="Yes, it shipped today."))
    command = command.model_copy(update={"payload": command.payload.model_copy(update={"reply_to": wamid})})
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    assert found[command.payload.request_id]["event_type"] == "send.accepted"
    [sent] = await simulator.client.sent(tenant_a.phone_number_id, to=wa_id)
    assert sent.body["text"]["body"] == "Yes, it shipped today."
    assert sent.body["context"] == {"message_id": wamid}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (TemplateMessage(name="open_template", language="en", parameters={"WRONG": "x"}), "template_params"),
        (TemplateMessage(name="open_template", language="en", parameters=["one", "two"]), "template_params"),
        (TemplateMessage(name="open_template", language="en", parameters={"SENTENCE": "  "}), "template_params"),
        (TemplateMessage(name="no_such_template", language="en"), "template_unknown"),
        (TemplateMessage(name="open_template", language="de"), "template_unknown"),
        (TemplateMessage(name="loyalty_welcome", language="en", parameters=["Maria"]), "template_unknown"),
    ],
)
async def test_template_mistakes_are_refused_before_the_call(
    outbound: str,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
    message: TemplateMessage,
    reason: str,
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    command = send_requested(tenant_a, wa_id, message)
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    assert found[command.payload.request_id]["payload"]["reason"] == reason
    assert await simulator.client.sent(tenant_a.phone_number_id, to=wa_id) == []


async def test_named_and_positional_parameters_reach_meta_in_its_format(
    outbound: str, simulator: Simulator, publisher: EventPublisher, results: Results, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    named = send_requested(
        tenant_a,
        wa_id,
        TemplateMessage(
            name="appointment_reminder",
            language="es_MX",
            parameters={"CUSTOMER_NAME": "Maria", "%%APPOINTMENT_TIME%%": "10:30"},
        ),
    )
    header_body = send_requested(
        tenant_a, wa_id, TemplateMessage(name="spring_sale", language="en", parameters=["Maria", "Ana", "20%", "May 1"])
    )
    await publisher.publish_many([named, header_body])

    found = await results.wait_for(named.payload.request_id, header_body.payload.request_id)

    assert {r["event_type"] for r in found.values()} == {"send.accepted"}, found
    sent = await simulator.client.sent(tenant_a.phone_number_id, to=wa_id)
    assert sent[0].body["template"]["components"] == [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Maria", "parameter_name": "customer_name"},
                {"type": "text", "text": "10:30", "parameter_name": "appointment_time"},
            ],
        }
    ]
    assert [c["type"] for c in sent[1].body["template"]["components"]] == ["header", "body"]


async def test_a_redelivered_command_sends_once(
    outbound: str, simulator: Simulator, publisher: EventPublisher, results: Results, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    command = send_requested(tenant_a, wa_id, goodbye("once"))
    # The same request three times (as a producer retry or a replay would deliver it), then another one to the
    # same customer: commands of one customer share a partition, so its result means the copies were handled.
    sentinel = send_requested(tenant_a, wa_id, goodbye("after"))
    await publisher.publish_many([command])
    await publisher.publish_many([command])
    await publisher.publish_many([command, sentinel])

    await results.wait_for(command.payload.request_id, sentinel.payload.request_id)

    sent = await simulator.client.sent(tenant_a.phone_number_id, to=wa_id)
    bodies = [s.body["template"]["components"][0]["parameters"][0]["text"] for s in sent]
    assert bodies == ["once", "after"]
    assert results.count(command.payload.request_id) == 1


@pytest.mark.parametrize(("code", "http_status"), [(131000, None), (131016, None), (None, 503), (130429, None)])
async def test_temporary_errors_are_retried_until_whatsapp_accepts(
    outbound: str,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
    code: int | None,
    http_status: int | None,
) -> None:
    tenant_b = tenants[1]
    wa_id = new_wa_id()
    await simulator.client.inject_fault(tenant_b.phone_number_id, code=code, http_status=http_status, count=2)
    command = send_requested(tenant_b, wa_id, goodbye())
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    assert found[command.payload.request_id]["event_type"] == "send.accepted"
    sent = await simulator.client.sent(tenant_b.phone_number_id, to=wa_id)
    assert len(sent) == 3
    assert [s.wamid is not None for s in sent] == [False, False, True]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (131026, "undeliverable"),
        (131047, "window_closed"),
        (190, "auth"),
        (132001, "template_unknown"),
        (368, "meta_error"),
    ],
)
async def test_permanent_errors_are_not_retried(
    outbound: str,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
    code: int,
    reason: str,
) -> None:
    tenant_b = tenants[1]
    wa_id = new_wa_id()
    await simulator.client.inject_fault(tenant_b.phone_number_id, code=code)
    command = send_requested(tenant_b, wa_id, goodbye())
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    payload = found[command.payload.request_id]["payload"]
    assert payload["reason"] == reason
    assert payload["meta_error"]["code"] == code
    assert len(await simulator.client.sent(tenant_b.phone_number_id, to=wa_id)) == 1


async def test_a_number_that_keeps_failing_gives_up_after_the_bounded_time(
    outbound: str, simulator: Simulator, publisher: EventPublisher, results: Results, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_b = tenants[1]
    wa_id = new_wa_id()
    await simulator.client.inject_fault(tenant_b.phone_number_id, code=131016, count=1000)
    try:
        command = send_requested(tenant_b, wa_id, goodbye())
        await publisher.publish(command)

        found = await results.wait_for(command.payload.request_id)
    finally:
        await simulator.client.reset()  # drops the faults left over

    payload = found[command.payload.request_id]["payload"]
    assert payload["reason"] == "gave_up"
    assert payload["meta_error"]["code"] == 131016


async def test_another_tenants_number_is_refused(
    outbound: str, simulator: Simulator, publisher: EventPublisher, results: Results, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a, tenant_b = tenants
    wa_id = new_wa_id()
    command = send_requested(tenant_a, wa_id, goodbye(), phone_number_id=tenant_b.phone_number_id)
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id)

    assert found[command.payload.request_id]["payload"]["reason"] == "invalid"
    assert await simulator.client.sent(tenant_b.phone_number_id, to=wa_id) == []


async def test_a_malformed_command_is_dead_lettered_and_the_next_one_is_sent(
    outbound: str,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    topics_ready: CommonSettings,
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    bad = send_requested(tenant_a, wa_id, goodbye()).model_dump(mode="json")
    del bad["payload"]["request_id"]
    good = send_requested(tenant_a, wa_id, goodbye())
    async with TopicReader(topics_ready, topics.dlq(topics.OUTBOUND_COMMANDS)) as dlq:
        await publisher.publish_raw(
            topics.OUTBOUND_COMMANDS, json.dumps(bad).encode(), key=f"{tenant_a.tenant_id}:{wa_id}".encode(), headers={}
        )
        await publisher.publish(good)
        letters = await dlq.read(1)
        found = await results.wait_for(good.payload.request_id)

    assert len(letters) == 1
    assert "request_id" in letters[0]["error"]
    assert found[good.payload.request_id]["event_type"] == "send.accepted"
    assert len(await simulator.client.sent(tenant_a.phone_number_id, to=wa_id)) == 1


async def test_an_agent_reading_a_chat_marks_the_last_message_read_on_whatsapp_once(
    outbound: str,
    api: httpx.AsyncClient,
    simulator: Simulator,
    publisher: EventPublisher,
    tenants: tuple[SeededTenant, ...],
) -> None:
    tenant_a = tenants[0]
    wa_id = new_wa_id()
    wamid = await open_window(api, simulator, publisher, tenant_a, wa_id)

    def chat_read(last_inbound_wamid: str) -> ChatReadEvent:
        return ChatReadEvent.new(
            tenant_id=tenant_a.tenant_id,
            payload=ChatRead(
                chat_id=f"ch_{wa_id}",
                phone_number_id=tenant_a.phone_number_id,
                wa_id=wa_id,
                read_by="agent:test",
                last_inbound_wamid=last_inbound_wamid,
            ),
        )

    later = (await simulator.client.customer_message(tenant_a.phone_number_id, wa_id, text="?", wait=False)).wamid
    # The same read twice, then a later one of the same chat (same partition): once that one is marked,
    # the copies have been handled.
    await publisher.publish_many([chat_read(wamid), chat_read(wamid), chat_read(later)])

    receipts: list[str] = []
    for _ in range(200):
        sent = await simulator.client.sent(tenant_a.phone_number_id)
        receipts = [s.body["message_id"] for s in sent if s.type == "read" and s.body["message_id"] in (wamid, later)]
        if later in receipts:
            break
        await asyncio.sleep(0.05)

    assert sorted(receipts) == sorted([wamid, later])
