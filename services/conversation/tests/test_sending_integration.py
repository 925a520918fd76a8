"""Sending: refusals, send.requested with idempotency, then outbound's results and Meta's statuses."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

import pytest
from waflow_common import topics
from waflow_testing.fixtures import TopicReader, fixture_json

from .conftest import Stack, eventually, new_wa_id

pytestmark = pytest.mark.integration


async def _open_chat(stack: Stack, wa_id: str) -> dict[str, Any]:
    await stack.publish(stack.text(wa_id, "hello?"))
    return await stack.chat_for(wa_id)


async def _message(stack: Stack, chat_id: str, message_id: str) -> dict[str, Any]:
    r = await stack.get(f"/v1/chats/{chat_id}/messages/{message_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _status_is(stack: Stack, chat_id: str, message_id: str, status: str) -> dict[str, Any] | None:
    message = await _message(stack, chat_id, message_id)
    return message if message["status"] == status else None


async def test_free_form_reply_is_stored_pending_and_requested_once(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _open_chat(stack, wa_id)
    body = {"type": "text", "body": "It ships today.", "requested_by": "agent:giulia"}
    async with TopicReader(stack.settings, topics.OUTBOUND_COMMANDS) as commands:
        first = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", body, headers={"Idempotency-Key": "k-1"})
        retry = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", body, headers={"Idempotency-Key": "k-1"})
        requested = await commands.read(2, timeout=3)
    assert first.status_code == 202, first.text
    assert retry.status_code == 202
    assert retry.json() == first.json()
    message = first.json()["message"]
    assert (message["status"], message["wamid"], message["direction"]) == ("pending", None, "out")
    assert len(requested) == 1  # the retried POST sent nothing more
    command = requested[0]
    assert command["event_type"] == "send.requested"
    assert command["payload"]["request_id"] == first.json()["request_id"]
    assert command["payload"]["message"] == {"type": "text", "body": "It ships today.", "preview_url": False}
    assert command["payload"]["wa_id"] == wa_id
    assert command["payload"]["requested_by"] == "agent:giulia"

    reused = await stack.post(
        f"/v1/chats/{chat['chat_id']}/messages", {"type": "text", "body": "else"}, headers={"Idempotency-Key": "k-1"}
    )
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    latest = await stack.chat_for(wa_id)
    assert latest["last_message"]["preview"] == "It ships today."


async def test_statuses_in_any_order_end_at_the_furthest(stack: Stack) -> None:
    """Meta's samples (sent, delivered, read of one wamid), in any order and duplicated, end in one message that
    is read; the first of them arrives before the message exists anywhere and is applied once it appears."""
    samples = [fixture_json(f"status_{s}.json") for s in ("sent", "delivered", "read")]
    raw = [s["entry"][0]["changes"][0]["value"]["statuses"][0] for s in samples]
    for order_index, order in enumerate(itertools.islice(itertools.permutations(range(3)), 0, 6, 2)):
        wa_id = new_wa_id()
        chat = await _open_chat(stack, wa_id)
        wamid = raw[0]["id"].replace("=", "") + str(order_index) + wa_id  # same sample wamid, unique per round
        statuses = [stack.status(wamid, wa_id, raw[i]["status"], _at(raw[i]["timestamp"])) for i in order]
        # Meta's status comes first: conversation has never heard of this wamid, so it holds the status.
        await stack.publish(statuses[0])
        await eventually(lambda w=wamid: stack.stored("orphan_statuses", stack.a, w), what="the status held")
        r = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", {"type": "text", "body": f"order {order}"})
        assert r.status_code == 202, r.text
        request_id, message_id = r.json()["request_id"], r.json()["message"]["message_id"]
        assert r.json()["message"]["status"] == "pending"
        # Then outbound's answer brings the wamid: the held status applies, and nothing else was published.
        await stack.publish(stack.accepted(request_id, wa_id, wamid))
        first = raw[order[0]]
        held = await eventually(
            lambda c=chat["chat_id"], m=message_id, s=first["status"]: _status_is(stack, c, m, s),  # type: ignore[misc]
            what=f"the held {first['status']} applied",
        )
        assert held["status_at"] == _at(first["timestamp"]).isoformat().replace("+00:00", "Z")
        assert await stack.stored("orphan_statuses", stack.a, wamid) is None
        await stack.publish(*statuses[1:], *statuses)
        message = await eventually(
            lambda c=chat["chat_id"], m=message_id: _status_is(stack, c, m, "read")  # type: ignore[misc]
        )
        assert message["wamid"] == wamid
        assert message["status_at"].startswith("2026-01-01T09:16:40")
        items = await stack.timeline(chat["chat_id"])
        assert [i["message_id"] for i in items].count(message_id) == 1


def _at(timestamp: str) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(timestamp), UTC)


async def test_failed_is_final_unless_a_later_delivery_arrives(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _open_chat(stack, wa_id)
    sample = fixture_json("status_failed_131047.json")["entry"][0]["changes"][0]["value"]["statuses"][0]
    r = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", {"type": "text", "body": "late"})
    request_id, message_id = r.json()["request_id"], r.json()["message"]["message_id"]
    wamid = sample["id"] + wa_id
    failed_at = _at(sample["timestamp"])
    await stack.publish(
        stack.accepted(request_id, wa_id, wamid),
        stack.status(wamid, wa_id, "failed", failed_at, error_code=131047),
        stack.status(wamid, wa_id, "sent", failed_at - timedelta(seconds=5)),
    )
    message = await eventually(lambda: _status_is(stack, chat["chat_id"], message_id, "failed"))
    assert message["failure"]["reason"] == "window_closed"
    assert message["failure"]["code"] == 131047
    # An earlier-stamped delivered does not revive it; a later one does (multi-device).
    await stack.publish(stack.status(wamid, wa_id, "delivered", failed_at - timedelta(seconds=1)))
    await stack.publish(stack.text(wa_id, "marker"))
    await eventually(lambda: stack.preview_is(wa_id, "marker"))
    assert (await _message(stack, chat["chat_id"], message_id))["status"] == "failed"
    await stack.publish(stack.status(wamid, wa_id, "delivered", failed_at + timedelta(seconds=3)))
    message = await eventually(lambda: _status_is(stack, chat["chat_id"], message_id, "delivered"))
    assert message["failure"] is None


@pytest.mark.parametrize("status_first", [True, False], ids=["status-first", "unknown-first"])
async def test_meta_statuses_name_a_send_whose_outcome_outbound_could_not_tell(
    stack: Stack, status_first: bool
) -> None:
    """outbound reports `outcome_unknown` when it lost track of a call (killed, or cut off from its database);
    if WhatsApp did send it, Meta's statuses carry the request id, so the message shows what Meta says."""
    wa_id = new_wa_id()
    chat = await _open_chat(stack, wa_id)
    r = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", {"type": "text", "body": "did it go?"})
    request_id, message_id = r.json()["request_id"], r.json()["message"]["message_id"]
    wamid = f"wamid.unknown-{wa_id}"
    now = _at("1767258000")
    sent = stack.status(wamid, wa_id, "sent", now, request_id=request_id)
    delivered = stack.status(wamid, wa_id, "delivered", now + timedelta(seconds=2))  # without the request id
    unknown = stack.rejected(request_id, wa_id, "outcome_unknown")
    if status_first:
        await stack.publish(delivered)
        await eventually(lambda: stack.stored("orphan_statuses", stack.a, wamid), what="the status held")
        await stack.publish(sent)
        await eventually(lambda: _status_is(stack, chat["chat_id"], message_id, "delivered"))
        await stack.publish(unknown)
        await stack.publish(stack.text(wa_id, "marker"))
        await eventually(lambda: stack.preview_is(wa_id, "marker"))
    else:
        await stack.publish(unknown)
        failed = await eventually(lambda: _status_is(stack, chat["chat_id"], message_id, "failed"))
        assert failed["failure"]["reason"] == "outcome_unknown"
        await stack.publish(delivered, sent)
    message = await eventually(lambda: _status_is(stack, chat["chat_id"], message_id, "delivered"))
    assert (message["wamid"], message["failure"]) == (wamid, None)
    assert await stack.stored("orphan_statuses", stack.a, wamid) is None


async def test_a_status_naming_another_tenants_request_changes_nothing(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _open_chat(stack, wa_id)
    r = await stack.post(f"/v1/chats/{chat['chat_id']}/messages", {"type": "text", "body": "mine"})
    request_id, message_id = r.json()["request_id"], r.json()["message"]["message_id"]
    wamid = f"wamid.other-{wa_id}"
    await stack.publish(
        stack.status(wamid, wa_id, "delivered", _at("1767258000"), tenant=stack.b, request_id=request_id)
    )
    await stack.publish(stack.text(wa_id, "marker"))
    await eventually(lambda: stack.preview_is(wa_id, "marker"))
    message = await _message(stack, chat["chat_id"], message_id)
    assert (message["status"], message["wamid"]) == ("pending", None)


async def test_rejected_send_shows_the_reason(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _open_chat(stack, wa_id)
    r = await stack.post(
        f"/v1/chats/{chat['chat_id']}/messages", {"type": "template", "name": "nope", "language": "en"}
    )
    request_id, message_id = r.json()["request_id"], r.json()["message"]["message_id"]
    await stack.publish(stack.rejected(request_id, wa_id, "template_unknown"))
    message = await eventually(lambda: _status_is(stack, chat["chat_id"], message_id, "failed"))
    assert message["failure"]["reason"] == "template_unknown"
    assert message["content"] == {"type": "template", "name": "nope", "language": "en", "parameters": {}}


async def test_after_the_window_free_form_is_refused_and_a_template_goes_through(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _open_chat(stack, wa_id)
    path = f"/v1/chats/{chat['chat_id']}/messages"
    stack.clock.advance(timedelta(hours=24, seconds=1))
    r = await stack.post(path, {"type": "text", "body": "are you there?"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "window_closed"
    template = {"type": "template", "name": "open_template", "language": "en", "parameters": {"SENTENCE": "hi"}}
    async with TopicReader(stack.settings, topics.OUTBOUND_COMMANDS) as commands:
        r = await stack.post(path, template)
        requested = await commands.read(1)
    assert r.status_code == 202, r.text
    assert requested[0]["payload"]["message"]["name"] == "open_template"
    assert (await stack.chat_for(wa_id))["window"]["open"] is False


async def test_blacklisted_contacts_are_refused_at_once(stack: Stack) -> None:
    wa_id = "3461" + str(uuid.uuid4().int)[:7]  # valid: the agent types it as "New chat" below
    chat = await _open_chat(stack, wa_id)
    await stack.publish(stack.contact(wa_id, name="Spam Bot", blacklisted=True))
    blocked = await eventually(lambda: _blacklisted(stack, wa_id))
    assert blocked["contact"]["deleted"] is True
    async with TopicReader(stack.settings, topics.OUTBOUND_COMMANDS) as commands:
        r = await stack.post(
            f"/v1/chats/{chat['chat_id']}/messages", {"type": "template", "name": "open_template", "language": "en"}
        )
        requested = await commands.read(1, timeout=2)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "blacklisted"
    assert requested == []
    r = await stack.post("/v1/chats", {"phone": "+" + wa_id})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "blacklisted"


async def _blacklisted(stack: Stack, wa_id: str) -> dict[str, Any] | None:
    chat = await stack.chat_for(wa_id)
    return chat if chat["blacklisted"] else None


async def test_a_reply_quotes_the_customers_message(stack: Stack) -> None:
    wa_id = new_wa_id()
    inbound = stack.text(wa_id, "Can I change the address?")
    await stack.publish(inbound)
    chat = await stack.chat_for(wa_id)
    customer = (await stack.timeline(chat["chat_id"]))[0]
    async with TopicReader(stack.settings, topics.OUTBOUND_COMMANDS) as commands:
        r = await stack.post(
            f"/v1/chats/{chat['chat_id']}/messages",
            {"type": "text", "body": "Yes", "reply_to": customer["message_id"]},
        )
        requested = await commands.read(1)
    assert r.status_code == 202, r.text
    assert requested[0]["payload"]["reply_to"] == inbound.payload.wamid
    assert r.json()["message"]["reply_to"]["message_id"] == customer["message_id"]
    r = await stack.post(
        f"/v1/chats/{chat['chat_id']}/messages", {"type": "text", "body": "Yes", "reply_to": "msg_unknown"}
    )
    assert r.status_code == 404
