"""`POST /{version}/{phone_number_id}/messages`: auth, validation, Meta's rules and injected faults."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from waflow_simulator.client import SimulatorClient
from waflow_simulator.ids import wa_id_of

SEND_FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "whatsapp" / "send"


def _sample(name: str) -> Any:
    return json.loads((SEND_FIXTURES / name).read_text())


def _without_trace(body: dict[str, Any]) -> dict[str, Any]:
    return {"error": {k: v for k, v in body["error"].items() if k != "fbtrace_id"}}


def _template(name: str, language: str, *components: dict[str, Any]) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": "15557654321",
        "type": "template",
        "template": {"name": name, "language": {"code": language}, "components": list(components)},
    }


def _body(*texts: str) -> dict[str, Any]:
    return {"type": "body", "parameters": [{"type": "text", "text": t} for t in texts]}


@pytest.fixture
async def open_window(sim: SimulatorClient, ids) -> None:
    await sim.customer_message(ids.number_id, ids.customer, text="hi")


async def test_success_answer_and_sent_log(sim: SimulatorClient, send, open_window, ids) -> None:
    response = await send(_sample("text.json"))

    assert response.status_code == 200
    body = response.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+15557654321", "wa_id": "15557654321"}]
    [message] = body["messages"]
    assert list(message) == ["id"]
    assert wa_id_of(message["id"]) == ids.customer
    [record] = await sim.sent()
    assert (record.phone_number_id, record.to, record.type, record.wamid, record.error_code) == (
        ids.number_id,
        ids.customer,
        "text",
        message["id"],
        None,
    )
    assert record.body == _sample("text.json")


@pytest.mark.parametrize(
    "name",
    [
        "text.json",
        "image_by_id.json",
        "document_by_link.json",
        "interactive_buttons.json",
        "reaction.json",
        "reply_with_context.json",
        "template_header_body.json",
        "template_named_params.json",
    ],
)
async def test_every_sample_request_is_accepted(send, open_window, name: str) -> None:
    response = await send(_sample(name))
    assert response.status_code == 200, response.json()
    if name.startswith("template"):
        assert response.json()["messages"][0]["message_status"] == "accepted"


@pytest.mark.parametrize("name", ["mark_as_read.json", "mark_as_read_typing.json"])
async def test_mark_as_read_answers_success_and_is_logged(sim: SimulatorClient, send, name: str, ids) -> None:
    response = await send(_sample(name))

    assert response.status_code == 200
    assert response.json() == _sample("response_mark_as_read.json")
    [record] = await sim.sent()
    assert (record.type, record.to, record.wamid) == ("read", ids.customer, None)


async def test_the_sent_log_finds_every_call_by_number_customer_and_kind(
    sim: SimulatorClient, send, open_window, ids
) -> None:
    await send(_sample("text.json"))
    await send(_sample("mark_as_read_typing.json"))
    await send(_template("open_template", "en", _body("x")))

    assert [s.type for s in await sim.sent(ids.number_id, to=ids.customer)] == ["text", "read", "template"]
    [read] = await sim.sent(ids.number_id, to=ids.customer, type="read")
    assert read.body["typing_indicator"] == {"type": "text"}
    assert [s.type for s in await sim.sent(type="template")] == ["template"]
    assert await sim.sent("another-number", type="read") == []


async def test_wrong_token_is_190_with_metas_graph_shape(sim: SimulatorClient, send) -> None:
    response = await send(_sample("text.json"), token="expired")

    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == set(_sample("error_190.json")["error"])
    assert (error["code"], error["error_subcode"], error["type"]) == (190, 463, "OAuthException")
    assert error["message"].startswith("Error validating access token: Session has expired on ")
    [record] = await sim.sent()
    assert record.error_code == 190


async def test_missing_authorization_is_190(sim: SimulatorClient, http, ids) -> None:
    response = await http.post(f"/v23.0/{ids.number_id}/messages", json=_sample("text.json"))
    assert (response.status_code, response.json()["error"]["code"]) == (401, 190)


async def test_unknown_number_is_100(sim: SimulatorClient, send) -> None:
    response = await send(_sample("text.json"), number="404404404")

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (100, 33, "GraphMethodException")
    assert "'404404404' does not exist" in error["message"]


async def test_bad_version_is_an_unknown_path(sim: SimulatorClient, send) -> None:
    response = await send(_sample("text.json"), version="latest")
    assert (response.status_code, response.json()["error"]["code"]) == (400, 2500)


def _text(**overrides: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": "15557654321", "type": "text", "text": {"body": "hi"}} | overrides


def _buttons(*titles: str) -> dict[str, Any]:
    buttons = [{"type": "reply", "reply": {"id": f"b{i}", "title": t}} for i, t in enumerate(titles)]
    return _text(
        type="interactive", interactive={"type": "button", "body": {"text": "?"}, "action": {"buttons": buttons}}
    )


@pytest.mark.parametrize(
    ("body", "code", "details"),
    [
        ({"to": "15557654321", "text": {"body": "hi"}}, 100, "messaging_product is required"),
        (_text(messaging_product="sms"), 100, 'must be one of {WHATSAPP} - got "sms"'),
        ({"messaging_product": "whatsapp", "text": {"body": "hi"}}, 131008, "The parameter to is required."),
        (_text(to="call me"), 131009, "Param to must be a phone number"),
        (_text(type="poll"), 100, "Param type must be one of"),
        (_text(type="image"), 131008, "The parameter image is required."),
        (_text(text={"preview_url": True}), 131008, "The parameter text['body'] is required."),
        (_text(text={"body": "x" * 4097}), 100, "text['body'] must be at most 4096 characters long"),
        (_text(text="hi"), 100, "Param text must be a JSON object."),
        (_text(type="image", image={"caption": "c"}), 131008, "image['id'] or image['link'] is required"),
        (_text(type="image", image={"id": "1", "link": "https://x"}), 100, "either 'id' or 'link'"),
        (_buttons("a", "b", "c", "d"), 131009, "between 1 and 3"),
        (_buttons("x" * 21), 100, "['reply']['title'] must be at most 20 characters long"),
        (_buttons("Same", "Same"), 200, ""),
        (_text(type="reaction", reaction={"message_id": "wamid.X"}), 131008, "reaction['emoji'] is required"),
        (_text(type="location", location={"latitude": 1}), 131008, "location['longitude'] is required"),
        (_text(type="contacts", contacts=[]), 131008, "contacts[0]"),
        (_text(type="interactive", interactive={"type": "carousel"}), 100, "interactive['type'] must be one of"),
        (_text(type="template", template={"name": "open_template"}), 131008, "template['language'] is required"),
        (_text(context={"id": "wamid.X"}), 131008, "context['message_id'] is required"),
        ({"messaging_product": "whatsapp", "status": "read"}, 131008, "The parameter message_id is required."),
        ({"messaging_product": "whatsapp", "status": "read", "message_id": "123"}, 131009, "Invalid message_id"),
        (b"{not json", 100, "must be a JSON object"),
    ],
)
async def test_validation_errors_like_meta(
    sim: SimulatorClient, send, open_window, body: Any, code: int, details: str
) -> None:
    response = await send(body)

    if code == 200:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(f"(#{code}) ")
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert details in error["error_data"]["details"]
    assert (await sim.sent())[-1].error_code == code


async def test_text_of_exactly_4096_characters_is_fine(send, open_window) -> None:
    assert (await send(_text(text={"body": "é" * 4096}))).status_code == 200


async def test_window_closed_is_131047_then_a_template_passes(sim: SimulatorClient, send, ids) -> None:
    refused = await send(_sample("text.json"))
    assert refused.status_code == 400
    assert _without_trace(refused.json()) == _without_trace(_sample("error_131047.json"))

    template = _template("open_template", "en", _body("Maria"))
    assert (await send(template)).status_code == 200

    await sim.customer_message(ids.number_id, ids.customer, text="hello again")
    assert (await send(_sample("text.json"))).status_code == 200

    await sim.close_window(ids.number_id, ids.customer)
    assert (await send(_sample("text.json"))).json()["error"]["code"] == 131047
    assert (await send(template)).status_code == 200
    assert [r.error_code for r in await sim.sent(to=ids.customer)] == [131047, None, None, 131047, None]


async def test_throughput_over_rate_per_second_is_130429(sim: SimulatorClient, send, clock, ids) -> None:
    await sim.put_number(
        ids.number_id,
        display_phone_number=ids.display,
        waba_id=ids.waba_id,
        app_id=ids.app_id,
        access_token=ids.token,
        rate_per_second=3,
    )
    template = _template("open_template", "en", _body("Maria"))

    assert [(await send(template)).status_code for _ in range(3)] == [200, 200, 200]
    limited = await send(template)
    assert limited.status_code == 400
    assert _without_trace(limited.json()) == _without_trace(_sample("error_130429.json"))

    clock.advance(0.9)
    assert (await send(template)).json()["error"]["code"] == 130429
    clock.advance(0.2)  # the first three are now more than a second old
    assert [(await send(template)).status_code for _ in range(4)] == [200, 200, 200, 400]


async def test_mark_as_read_does_not_use_throughput(sim: SimulatorClient, send, ids) -> None:
    await sim.put_number(
        ids.number_id,
        display_phone_number=ids.display,
        waba_id=ids.waba_id,
        app_id=ids.app_id,
        access_token=ids.token,
        rate_per_second=1,
    )
    assert [(await send(_sample("mark_as_read.json"))).status_code for _ in range(3)] == [200, 200, 200]
    assert (await send(_template("open_template", "en", _body("Maria")))).status_code == 200


async def test_sending_to_the_business_itself_is_131021(sim: SimulatorClient, send, ids) -> None:
    response = await send(_template("open_template", "en", _body("Maria")) | {"to": ids.display})
    assert response.json()["error"]["code"] == 131021


@pytest.mark.parametrize(
    ("name", "language", "details"),
    [
        ("no_such_template", "en", "template name (no_such_template) does not exist in en"),
        ("open_template", "en_US", "template name (open_template) does not exist in en_US"),
        ("loyalty_welcome", "en", "template name (loyalty_welcome) is not approved in en (status PENDING)"),
        ("win_back_offer", "en", "template name (win_back_offer) is not approved in en (status REJECTED)"),
    ],
)
async def test_missing_or_unapproved_template_is_132001(
    sim: SimulatorClient, send, name: str, language: str, details: str
) -> None:
    response = await send(_template(name, language, _body("x")))

    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (132001, "(#132001) Template name does not exist in the translation")
    assert error["error_data"]["details"] == details


async def test_paused_template_is_132015(sim: SimulatorClient, send, ids) -> None:
    await sim.put_templates(
        ids.waba_id,
        [{"name": "promo", "language": "en", "status": "PAUSED", "components": [{"type": "BODY", "text": "Hi"}]}],
    )
    assert (await send(_template("promo", "en"))).json()["error"]["code"] == 132015


async def test_parameter_count_mismatch_is_132000_like_the_sample(sim: SimulatorClient, send, ids) -> None:
    await sim.put_templates(
        ids.waba_id,
        [{"name": "two_params", "language": "en", "components": [{"type": "BODY", "text": "{{1}} and {{2}}"}]}],
    )

    response = await send(_template("two_params", "en", _body("only one")))

    assert response.status_code == 400
    assert _without_trace(response.json()) == _without_trace(_sample("error_132000.json"))


@pytest.mark.parametrize(
    ("template", "details"),
    [
        (_template("open_template", "en"), "body: number of localizable_params (0)"),
        (_template("open_template", "en", _body("a", "b")), "body: number of localizable_params (2)"),
        (
            _template("order_shipped_v2", "en_US", _body("a", "b", "c", "d")),
            "header: number of localizable_params (0) does not match the expected number of params (1)",
        ),
        (
            _template(
                "order_shipped_v2",
                "en_US",
                {"type": "header", "parameters": [{"type": "image", "image": {"id": "1"}}]},
                _body("a", "b", "c", "d"),
            ),
            "button at index 1: number of localizable_params (0) does not match the expected number of params (1)",
        ),
        (
            _template(
                "open_template",
                "en",
                _body("a"),
                {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": []},
            ),
            "button at index 0 does not exist",
        ),
        (
            _template(
                "appointment_reminder",
                "es_MX",
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "parameter_name": "customer_name", "text": "Maria"},
                        {"type": "text", "parameter_name": "time", "text": "10:30"},
                    ],
                },
            ),
            "parameter names",
        ),
    ],
)
async def test_template_parameters_must_fit(sim: SimulatorClient, send, template: dict[str, Any], details: str) -> None:
    response = await send(template)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 132000
    assert details in error["error_data"]["details"]


async def test_custom_templates_are_sendable_and_replace_each_other(sim: SimulatorClient, send, ids) -> None:
    header = {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"}
    await sim.put_templates(
        ids.waba_id,
        [{"name": "custom", "language": "de", "components": [header, {"type": "BODY", "text": "Hallo {{1}}"}]}],
    )
    header_params = {"type": "header", "parameters": [{"type": "text", "text": "#1"}]}
    assert (await send(_template("custom", "de", header_params, _body("Ana")))).status_code == 200

    await sim.put_templates(ids.waba_id, [])
    assert (await send(_template("custom", "de", header_params, _body("Ana")))).json()["error"]["code"] == 132001
    assert (await send(_template("open_template", "en", _body("Ana")))).status_code == 200


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"code": 131000}, 500, 131000),
        ({"code": 131016}, 503, 131016),
        ({"code": 130429}, 400, 130429),
        ({"code": 131026}, 400, 131026),
        ({"code": 190}, 401, 190),
        ({"code": 131000, "http_status": 502}, 502, 131000),
        ({"http_status": 500}, 500, 2),
    ],
)
async def test_injected_faults_fail_the_next_calls(
    sim: SimulatorClient, send, open_window, ids, fault: dict[str, int], status: int, code: int
) -> None:
    await sim.inject_fault(ids.number_id, count=2, **fault)

    failures = [await send(_sample("text.json")) for _ in range(2)]

    assert [(r.status_code, r.json()["error"]["code"]) for r in failures] == [(status, code)] * 2
    assert (await send(_sample("text.json"))).status_code == 200
    assert [r.error_code for r in await sim.sent()] == [code, code, None]


async def test_fault_body_matches_the_sample(sim: SimulatorClient, send, ids) -> None:
    await sim.inject_fault(ids.number_id, code=131026)
    response = await send(_sample("text.json"))
    assert _without_trace(response.json()) == _without_trace(_sample("error_131026.json"))


async def test_faults_come_before_validation_and_queue_up(sim: SimulatorClient, send, open_window, ids) -> None:
    await sim.inject_fault(ids.number_id, code=131000)
    await sim.inject_fault(ids.number_id, code=131016)

    assert (await send(b"garbage")).json()["error"]["code"] == 131000
    assert (await send(_sample("text.json"))).json()["error"]["code"] == 131016
    assert (await send(_sample("text.json"))).status_code == 200


async def test_slow_fault_delays_the_answer(sim: SimulatorClient, send, open_window, ids) -> None:
    await sim.inject_fault(ids.number_id, delay_seconds=0.2)

    started = time.monotonic()
    response = await send(_sample("text.json"))

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    started = time.monotonic()
    assert (await send(_sample("text.json"))).status_code == 200
    assert time.monotonic() - started < 0.2


async def test_fault_needs_a_number_and_an_effect(sim: SimulatorClient, http, ids) -> None:
    assert (await http.post("/_sim/faults", json={"phone_number_id": ids.number_id})).status_code == 422
    assert (await http.post("/_sim/faults", json={"phone_number_id": "nope", "code": 1})).status_code == 404


async def test_sent_log_filters_and_clears(sim: SimulatorClient, send, ids) -> None:
    template = _template("open_template", "en", _body("A"))
    await send(template)
    await send(template | {"to": "+447700900123"})
    await send(template, number="unknown-number")

    assert [r.to for r in await sim.sent()] == [ids.customer, "447700900123", ids.customer]
    assert [r.to for r in await sim.sent(to="+447700900123")] == ["447700900123"]
    assert len(await sim.sent(phone_number_id=ids.number_id)) == 2
    assert [r.error_code for r in await sim.sent(phone_number_id="unknown-number")] == [100]

    await sim.clear_sent()
    assert await sim.sent() == []


async def test_a_bsuid_only_customer_is_sent_to_by_recipient(sim: SimulatorClient, send, ids) -> None:
    """Meta's `recipient` (a business-scoped user id) stands in for `to` when the customer shows no number."""
    body = _template("open_template", "en", _body("and thanks"))
    del body["to"]
    response = await send(body | {"recipient": "US.13491208655302741918"})
    assert response.status_code == 200, response.text
    assert response.json()["contacts"] == [
        {"input": "US.13491208655302741918", "user_id": "US.13491208655302741918", "wa_id": ""}
    ]
    [record] = await sim.sent()
    assert (record.to, record.type, record.error_code) == ("US.13491208655302741918", "template", None)
    refused = await send(body | {"recipient": "not a user id"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == 131009  # parameter value is not valid
