"""Status webhooks after a successful send: sent, delivered, read (or failed), each in its own POST."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from waflow_simulator.client import SimulatorClient
from waflow_simulator.models import StatusFlow

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "whatsapp"


def _text(to: str = "15557654321", **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}, **extra}


def _open_template(to: str = "15557654321") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {
            "name": "open_template",
            "language": {"code": "en"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Maria"}]}],
        },
    }


async def _configure(sim: SimulatorClient, ids, *, flow: StatusFlow = "read", shuffle: bool = False) -> None:
    await sim.put_number(
        ids.number_id,
        display_phone_number=ids.display,
        waba_id=ids.waba_id,
        app_id=ids.app_id,
        access_token=ids.token,
        status_flow=flow,
        shuffle_statuses=shuffle,
    )


async def _send_and_settle(sim: SimulatorClient, send, body: dict[str, Any], **kwargs: Any) -> str:
    response = await send(body, **kwargs)
    assert response.status_code == 200, response.json()
    assert await sim.drain(timeout=5)
    wamid: str = response.json()["messages"][0]["id"]
    return wamid


async def test_sent_delivered_read_each_in_its_own_signed_post(
    sim: SimulatorClient, send, receiver, clock, ids
) -> None:
    await sim.customer_message(ids.number_id, ids.customer, text="hi")
    receiver.bodies.clear()
    receiver.signature_ok.clear()

    wamid = await _send_and_settle(sim, send, _text())

    assert len(receiver.bodies) == 3
    assert receiver.signature_ok == [True, True, True]
    statuses = receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert {s["id"] for s in statuses} == {wamid}
    assert {s["recipient_id"] for s in statuses} == {ids.customer}
    stamps = [int(s["timestamp"]) for s in statuses]
    assert stamps[0] == int(clock.now())
    assert stamps == sorted(set(stamps))
    for payload in receiver.payloads():
        [entry] = payload["entry"]
        [change] = entry["changes"]
        assert (entry["id"], change["field"]) == (ids.waba_id, "messages")
        assert change["value"]["metadata"] == {"display_phone_number": ids.display, "phone_number_id": ids.number_id}
    assert [d.kind for d in await sim.deliveries()] == ["message", "status", "status", "status"]


async def test_status_objects_have_the_samples_shape_on_v23(sim: SimulatorClient, send, receiver) -> None:
    await _send_and_settle(sim, send, _open_template())

    sent, delivered, read = receiver.statuses()
    samples = [json.loads((FIXTURES / f"status_{n}.json").read_text()) for n in ("sent", "delivered", "read")]
    shapes = [s["entry"][0]["changes"][0]["value"]["statuses"][0] for s in samples]
    assert [list(s) for s in (sent, delivered, read)] == [list(s) for s in shapes]
    assert list(sent["conversation"]) == ["id", "expiration_timestamp", "origin"]
    assert list(delivered["conversation"]) == ["id", "origin"]
    assert sent["conversation"]["id"] == delivered["conversation"]["id"]
    assert sent["conversation"]["origin"] == {"type": "utility"}
    assert sent["pricing"] == {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}


async def test_v24_statuses_carry_no_conversation(sim: SimulatorClient, send, receiver) -> None:
    await _send_and_settle(sim, send, _open_template(), version="v24.0")

    sent, delivered, read = receiver.statuses()
    assert "conversation" not in sent
    assert "conversation" not in delivered
    assert set(read) == {"id", "status", "timestamp", "recipient_id"}
    assert sent["pricing"]["category"] == "utility"


async def test_pricing_by_category_and_window(sim: SimulatorClient, send, receiver, ids) -> None:
    marketing = _open_template() | {
        "template": {
            "name": "spring_sale",
            "language": {"code": "en"},
            "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "Maria"}]},
                {"type": "body", "parameters": [{"type": "text", "text": t} for t in ("Maria", "20%", "May")]},
            ],
        }
    }
    await sim.customer_message(ids.number_id, ids.customer, text="hi")
    receiver.bodies.clear()

    await _send_and_settle(sim, send, marketing)
    await _send_and_settle(sim, send, _open_template())
    await _send_and_settle(sim, send, _text())

    pricing = [s["pricing"] for s in receiver.statuses() if s["status"] == "sent"]
    assert pricing == [
        {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"},
        {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": "utility"},
        {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"},
    ]


async def test_status_flow_stops_where_configured(sim: SimulatorClient, send, receiver, ids) -> None:
    await _configure(sim, ids, flow="delivered")
    await _send_and_settle(sim, send, _open_template())
    assert [s["status"] for s in receiver.statuses()] == ["sent", "delivered"]

    await _configure(sim, ids, flow="none")
    await _send_and_settle(sim, send, _open_template())
    assert len(receiver.statuses()) == 2


async def test_shuffle_statuses_delivers_in_reverse(sim: SimulatorClient, send, receiver, ids) -> None:
    await _configure(sim, ids, shuffle=True)

    await _send_and_settle(sim, send, _open_template())

    statuses = receiver.statuses()
    assert [s["status"] for s in statuses] == ["read", "delivered", "sent"]
    stamps = {s["status"]: int(s["timestamp"]) for s in statuses}
    assert stamps["sent"] < stamps["delivered"] < stamps["read"]


async def test_undeliverable_recipient_gets_failed_131026(sim: SimulatorClient, send, receiver) -> None:
    await sim.mark_undeliverable("15550000001")

    wamid = await _send_and_settle(sim, send, _open_template(to="15550000001"))

    [failed] = receiver.statuses()
    assert (failed["id"], failed["status"], failed["recipient_id"]) == (wamid, "failed", "15550000001")
    [error] = failed["errors"]
    assert (error["code"], error["title"]) == (131026, "Message undeliverable")
    assert set(error) == {"code", "title", "message", "error_data", "href"}
    assert "pricing" not in failed


async def test_reaction_only_gets_sent(sim: SimulatorClient, send, receiver, ids) -> None:
    await sim.customer_message(ids.number_id, ids.customer, text="hi")
    reaction = {
        "messaging_product": "whatsapp",
        "to": ids.customer,
        "type": "reaction",
        "reaction": {"message_id": "wamid.X", "emoji": "👍"},
    }
    await _send_and_settle(sim, send, reaction)
    assert [s["status"] for s in receiver.statuses()] == ["sent"]


async def test_biz_opaque_callback_data_is_echoed(sim: SimulatorClient, send, receiver) -> None:
    await _send_and_settle(sim, send, _open_template() | {"biz_opaque_callback_data": "job-42"})
    assert {s["biz_opaque_callback_data"] for s in receiver.statuses()} == {"job-42"}


async def test_status_delivery_is_retried(sim: SimulatorClient, send, receiver) -> None:
    receiver.answers.extend([500, 500])

    await _send_and_settle(sim, send, _open_template())

    assert [s["status"] for s in receiver.statuses()] == ["sent", "delivered", "read"]
    assert [d.attempts for d in await sim.deliveries()] == [3, 1, 1]


async def test_reset_cancels_pending_statuses(sim: SimulatorClient, send, receiver, ids) -> None:
    receiver.answers.extend([500] * 3)
    await send(_open_template())
    await sim.reset()
    assert await sim.drain(timeout=1)
    assert receiver.statuses() == []
    assert await sim.sent() == []
