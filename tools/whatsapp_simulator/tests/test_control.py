"""Control-plane odds and ends: health, settings, configuration echoes, reset."""

from __future__ import annotations

import pytest
from waflow_simulator.client import SimulatorClient
from waflow_simulator.settings import SimulatorSettings


def test_settings_come_from_simulator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_PORT", "9123")
    monkeypatch.setenv("SIMULATOR_RETRY_MAX_ATTEMPTS", "3")
    settings = SimulatorSettings()
    assert (settings.host, settings.port, settings.retry_max_attempts, settings.retry_base_seconds) == (
        "127.0.0.1",
        9123,
        3,
        0.5,
    )


async def test_health(sim: SimulatorClient, http) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert await sim.health()


async def test_put_echoes_configuration(sim: SimulatorClient, ids) -> None:
    app = await sim.put_app("a1", app_secret="s", webhook_url="http://x.test/hook")
    number = await sim.put_number("n1", display_phone_number="155", waba_id="w", app_id="a1", access_token="t")
    assert (app.app_id, app.webhook_url) == ("a1", "http://x.test/hook")
    assert (number.phone_number_id, number.rate_per_second, number.status_flow) == ("n1", 80, "read")


async def test_reset_forgets_traffic_but_keeps_configuration(sim: SimulatorClient, send, receiver, ids) -> None:
    await sim.customer_message(ids.number_id, ids.customer, text="hi")
    await sim.inject_fault(ids.number_id, code=131000)
    await sim.mark_undeliverable(ids.customer)

    await sim.reset()

    assert await sim.deliveries() == []
    text = {"messaging_product": "whatsapp", "to": ids.customer, "type": "text", "text": {"body": "x"}}
    assert (await send(text)).json()["error"]["code"] == 131047  # window gone, fault gone
    assert (await sim.customer_message(ids.number_id, ids.customer, text="again")).delivered
    assert (await send(text)).status_code == 200
    assert await sim.drain()
    assert receiver.statuses()[-1]["status"] == "read"  # no longer undeliverable
    assert [d.kind for d in await sim.deliveries()] == ["message", "status", "status", "status"]


async def test_customer_message_needs_text_or_content(sim: SimulatorClient, ids) -> None:
    with pytest.raises(ValueError, match="text or content"):
        await sim.customer_message(ids.number_id, ids.customer)
