"""Customer messages become Meta webhook envelopes and open (or not) the customer-service window."""

from __future__ import annotations

from waflow_simulator.client import SimulatorClient
from waflow_simulator.ids import wa_id_of
from waflow_simulator.models import CustomerMessage


async def test_text_message_envelope_has_metas_exact_shape(sim: SimulatorClient, receiver, clock, ids) -> None:
    result = await sim.customer_message(ids.number_id, ids.customer, text="Where is my order?", name="Maria Lopez")

    assert result.wamid.startswith("wamid.")
    assert wa_id_of(result.wamid) == ids.customer
    assert receiver.payloads() == [
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": ids.waba_id,
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"display_phone_number": ids.display, "phone_number_id": ids.number_id},
                                "contacts": [{"profile": {"name": "Maria Lopez"}, "wa_id": ids.customer}],
                                "messages": [
                                    {
                                        "from": ids.customer,
                                        "id": result.wamid,
                                        "timestamp": str(int(clock.now())),
                                        "type": "text",
                                        "text": {"body": "Where is my order?"},
                                    }
                                ],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
    ]


async def test_optional_parts_follow_the_type_object(sim: SimulatorClient, receiver, ids) -> None:
    await sim.customer_message(
        ids.number_id,
        ids.customer,
        type="button",
        content={"payload": "TRACK_4471", "text": "Track my parcel"},
        context={"from": ids.display, "id": "wamid.XYZ"},
        referral={"source_type": "ad", "source_id": "1"},
        timestamp=1_767_000_000,
        wamid="wamid.given",
    )

    [message] = receiver.messages()
    assert list(message) == ["from", "id", "timestamp", "type", "button", "context", "referral"]
    assert (message["id"], message["timestamp"]) == ("wamid.given", "1767000000")


async def test_system_message_has_no_contacts_and_opens_no_window(sim: SimulatorClient, receiver, send, ids) -> None:
    await sim.customer_message(
        ids.number_id,
        ids.customer,
        type="system",
        content={"body": "User changed number", "wa_id": "15557650000", "type": "user_changed_number"},
    )

    value = receiver.payloads()[0]["entry"][0]["changes"][0]["value"]
    assert "contacts" not in value
    assert value["messages"][0]["system"]["type"] == "user_changed_number"
    assert (await send(ids.text())).json()["error"]["code"] == 131047


async def test_unsupported_message_carries_error_131051(sim: SimulatorClient, receiver, ids) -> None:
    await sim.customer_message(ids.number_id, ids.customer, type="unsupported", content={"type": "poll"})

    [message] = receiver.messages()
    assert message["unsupported"] == {"type": "poll"}
    assert [e["code"] for e in message["errors"]] == [131051]


async def test_contacts_content_may_be_a_list(sim: SimulatorClient, receiver, ids) -> None:
    cards = [{"name": {"formatted_name": "Ana"}, "phones": [{"phone": "+1 555 0100", "type": "CELL"}]}]
    await sim.customer_message(ids.number_id, ids.customer, type="contacts", content=cards)
    assert receiver.messages()[0]["contacts"] == cards


async def test_reaction_does_not_open_the_window(sim: SimulatorClient, send, ids) -> None:
    await sim.customer_message(
        ids.number_id, ids.customer, type="reaction", content={"message_id": "wamid.A", "emoji": "👍"}
    )
    assert (await send(ids.text())).json()["error"]["code"] == 131047


async def test_window_lasts_24h_from_the_message_timestamp(sim: SimulatorClient, send, clock, ids) -> None:
    await sim.customer_message(ids.number_id, ids.customer, text="hi", timestamp=int(clock.now()) - 23 * 3600)
    assert (await send(ids.text())).status_code == 200

    clock.advance(3600)
    response = await send(ids.text())
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 131047


async def test_an_older_message_does_not_shorten_the_window(sim: SimulatorClient, send, clock, ids) -> None:
    now = int(clock.now())
    await sim.customer_message(ids.number_id, ids.customer, text="later", timestamp=now)
    await sim.customer_message(ids.number_id, ids.customer, text="earlier", timestamp=now - 20 * 3600)
    clock.advance(10 * 3600)
    assert (await send(ids.text())).status_code == 200


async def test_window_is_per_business_number(sim: SimulatorClient, send, ids) -> None:
    await sim.put_number(
        "999000111", display_phone_number="15550009999", waba_id=ids.waba_id, app_id=ids.app_id, access_token="t2"
    )
    await sim.customer_message("999000111", ids.customer, text="hi")
    assert (await send(ids.text())).json()["error"]["code"] == 131047
    assert (await send(ids.text(), number="999000111", token="t2")).status_code == 200


def _message(phone_number_id: str, wa_id: str, name: str, body: str, timestamp: int) -> CustomerMessage:
    return CustomerMessage.model_validate(
        {
            "phone_number_id": phone_number_id,
            "from": wa_id,
            "name": name,
            "type": "text",
            "content": {"body": body},
            "timestamp": timestamp,
        }
    )


async def test_batch_puts_several_customers_in_one_post(sim: SimulatorClient, receiver, ids) -> None:
    messages = [
        _message(ids.number_id, ids.customer, "Maria", "one", 100),
        _message(ids.number_id, "447700900123", "Tom", "two", 200),
        _message(ids.number_id, ids.customer, "Maria", "three", 300),
    ]

    result = await sim.customer_batch(messages)

    assert result.delivered
    assert len(result.wamids) == 3
    assert len(receiver.bodies) == 1
    value = receiver.payloads()[0]["entry"][0]["changes"][0]["value"]
    assert [c["wa_id"] for c in value["contacts"]] == [ids.customer, "447700900123"]
    assert [m["id"] for m in value["messages"]] == result.wamids
    assert [m["text"]["body"] for m in value["messages"]] == ["one", "two", "three"]


async def test_batch_shuffle_delivers_out_of_timestamp_order(sim: SimulatorClient, receiver, ids) -> None:
    messages = [_message(ids.number_id, f"1555000{i:04d}", f"C{i}", str(i), 1000 + i) for i in range(5)]

    result = await sim.customer_batch(messages, shuffle=True)

    delivered = receiver.messages()
    stamps = [int(m["timestamp"]) for m in delivered]
    assert stamps != sorted(stamps)
    assert sorted(m["id"] for m in delivered) == sorted(result.wamids)
    # The answer keeps the request's order, so callers can match wamids to what they sent.
    assert [m["id"] for m in sorted(delivered, key=lambda m: int(m["timestamp"]))] == result.wamids


async def test_batch_groups_by_waba_and_number(sim: SimulatorClient, receiver, ids) -> None:
    await sim.put_number(
        "118273645577310",
        display_phone_number="15550009876",
        waba_id="104882910399902",
        app_id=ids.app_id,
        access_token="tb",
    )
    messages = [
        _message(ids.number_id, ids.customer, "Maria", "a", 10),
        _message("118273645577310", "15559876543", "Aiko", "b", 11),
        _message(ids.number_id, "447700900123", "Tom", "c", 12),
    ]

    await sim.customer_batch(messages)

    entries = receiver.payloads()[0]["entry"]
    assert [e["id"] for e in entries] == [ids.waba_id, "104882910399902"]
    assert [len(e["changes"][0]["value"]["messages"]) for e in entries] == [2, 1]
    assert entries[1]["changes"][0]["value"]["metadata"]["phone_number_id"] == "118273645577310"


async def test_batch_across_apps_is_refused(sim: SimulatorClient, http, ids) -> None:
    await sim.put_app("other-app", app_secret="s", webhook_url="http://elsewhere.test/")
    await sim.put_number("777", display_phone_number="15550007777", waba_id="w7", app_id="other-app", access_token="t7")
    messages = [_message(ids.number_id, ids.customer, "M", "a", 1), _message("777", ids.customer, "M", "b", 2)]

    response = await http.post(
        "/_sim/customers/batch", json={"messages": [m.model_dump(by_alias=True) for m in messages]}
    )

    assert response.status_code == 400


async def test_unknown_number_is_404(sim: SimulatorClient, http, ids) -> None:
    body = {"phone_number_id": "nope", "from": ids.customer, "type": "text", "content": {"body": "x"}}
    response = await http.post("/_sim/customers/messages", json=body)
    assert response.status_code == 404
