"""Webhook signing over the exact bytes, retries, duplicates and raw replays."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import httpx
from waflow_simulator.client import SimulatorClient
from waflow_simulator.clock import ManualClock
from waflow_simulator.main import create_app
from waflow_simulator.settings import SimulatorSettings
from waflow_simulator.webhooks import encode, signature

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "whatsapp"


def test_signature_is_lowercase_hex_hmac_sha256_of_the_bytes() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    expected = hmac.new(b"top-secret", body, hashlib.sha256).hexdigest()
    assert signature("top-secret", body) == f"sha256={expected}"
    assert expected == expected.lower()


def test_encoding_is_compact_and_escapes_non_ascii_like_meta() -> None:
    assert encode({"name": "José 😀", "n": [1, 2]}) == b'{"name":"Jos\\u00e9 \\ud83d\\ude00","n":[1,2]}'


async def test_signature_matches_exact_bytes_with_non_ascii_name(sim: SimulatorClient, receiver, ids) -> None:
    result = await sim.customer_message(ids.number_id, ids.customer, text="Café ✅ ¿listo?", name="José Ñandú 😀")

    assert result.delivered
    body = receiver.bodies[0]
    assert receiver.signature_ok == [True]
    assert receiver.headers[0]["content-type"] == "application/json"
    assert receiver.headers[0]["x-hub-signature-256"] == signature(ids.app_secret, body)
    assert body.isascii()
    assert b"Jos\\u00e9 \\u00d1and\\u00fa \\ud83d\\ude00" in body
    assert b"Caf\\u00e9 \\u2705" in body
    # Hashing a re-encoded (UTF-8) copy gives another signature: receivers must hash the raw bytes.
    reencoded = json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()
    assert reencoded != body
    assert signature(ids.app_secret, reencoded) != receiver.headers[0]["x-hub-signature-256"]


async def test_retries_on_5xx_with_backoff_until_success(sim: SimulatorClient, receiver, ids) -> None:
    receiver.answers.extend([500, 503])

    result = await sim.customer_message(ids.number_id, ids.customer, text="hi")

    assert (result.delivered, result.attempts, result.status_code) == (True, 3, 200)
    assert receiver.calls == 3
    assert len(receiver.bodies) == 1
    [record] = await sim.deliveries()
    assert (record.kind, record.attempts, record.delivered, record.ids) == ("message", 3, True, [result.wamid])


async def test_gives_up_after_max_attempts_and_records_it(sim: SimulatorClient, receiver, ids) -> None:
    receiver.answers.extend([502] * 10)

    result = await sim.customer_message(ids.number_id, ids.customer, text="hi")

    assert (result.delivered, result.attempts, result.status_code) == (False, 4, 502)
    assert receiver.calls == 4
    [record] = await sim.deliveries(app_id=ids.app_id)
    assert (record.delivered, record.status_code, record.attempts) == (False, 502, 4)


async def test_connection_errors_are_retried(ids) -> None:
    calls: list[bytes] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200)

    settings = SimulatorSettings(retry_base_seconds=0.001, retry_max_attempts=5)
    async with httpx.AsyncClient(transport=httpx.MockTransport(flaky)) as webhooks:
        app = create_app(settings, clock=ManualClock(), http_client=webhooks)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as http:
            sim = SimulatorClient("http://sim", http)
            await sim.put_app(ids.app_id, app_secret=ids.app_secret, webhook_url=ids.webhook_url)
            await sim.put_number(
                ids.number_id,
                display_phone_number=ids.display,
                waba_id=ids.waba_id,
                app_id=ids.app_id,
                access_token=ids.token,
            )
            result = await sim.customer_message(ids.number_id, ids.customer, text="hi")
            [record] = await sim.deliveries()

    assert (result.delivered, result.attempts, result.status_code) == (True, 3, 200)
    assert len(set(calls)) == 1  # every retry carries the same bytes
    assert record.error is None


async def test_duplicates_deliver_the_same_signed_bytes_again(sim: SimulatorClient, receiver, ids) -> None:
    result = await sim.customer_message(ids.number_id, ids.customer, text="hi", duplicates=2)

    assert (result.delivered, result.attempts) == (True, 3)
    assert len(receiver.bodies) == 3
    assert len(set(receiver.bodies)) == 1
    assert {h["x-hub-signature-256"] for h in receiver.headers} == {signature(ids.app_secret, receiver.bodies[0])}
    assert [m["id"] for m in receiver.messages()] == [result.wamid] * 3


async def test_wait_false_answers_before_delivery(sim: SimulatorClient, receiver, ids) -> None:
    result = await sim.customer_message(ids.number_id, ids.customer, text="hi", wait=False)

    assert (result.delivered, result.attempts, result.status_code) == (False, 0, None)
    assert await sim.drain()
    assert [m["id"] for m in receiver.messages()] == [result.wamid]


async def test_raw_webhook_replays_a_sample_file_byte_exact(sim: SimulatorClient, receiver, send, ids) -> None:
    sample = json.loads((FIXTURES / "multi_entry_batch.json").read_text())

    result = await sim.raw_webhook(ids.app_id, sample, duplicates=1)

    assert (result.delivered, result.attempts, result.status_code) == (True, 2, 200)
    assert receiver.bodies == [json.dumps(sample, separators=(",", ":"), ensure_ascii=True).encode()] * 2
    assert receiver.signature_ok == [True, True]
    records = await sim.deliveries()
    assert [r.kind for r in records] == ["raw", "raw"]
    assert len(records[0].ids) == 5  # three messages and two statuses
    # The replayed customer messages opened their windows, so free-form replies are accepted.
    assert (await send(ids.text(to="447700900123"))).status_code == 200


async def test_raw_webhook_for_unknown_app_is_404(sim: SimulatorClient, http) -> None:
    response = await http.post("/_sim/webhooks/raw", json={"app_id": "nope", "body": {"object": "x"}})
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]
