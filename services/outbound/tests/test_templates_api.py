"""The templates API against the simulator's WABAs: sync, search, favourites, previews, and tenant isolation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from waflow_common.events.inbound import TemplateStatus, TemplateStatusEvent
from waflow_common.kafka import EventPublisher
from waflow_outbound.main import OutboundSettings, create_app
from waflow_testing.fixtures import SeededTenant, settings_for

from .conftest import Simulator

pytestmark = pytest.mark.integration

CUSTOM = {
    "name": "order_delayed",
    "language": "it",
    "category": "UTILITY",
    "components": [{"type": "BODY", "text": "Ciao {{1}}, il tuo ordine arriva il {{2}}."}],
}


async def listing(api: httpx.AsyncClient, tenant: SeededTenant, **params: str) -> list[dict[str, Any]]:
    r = await api.get("/v1/templates", headers=tenant.auth, params=params)
    assert r.status_code == 200, r.text
    templates: list[dict[str, Any]] = r.json()["templates"]
    return templates


def by_name(templates: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(t for t in templates if t["name"] == name)


async def test_open_template_is_there_in_the_agents_words(
    api: httpx.AsyncClient, tenants: tuple[SeededTenant, ...]
) -> None:
    for tenant in tenants:
        template = by_name(await listing(api, tenant), "open_template")
        assert template["content"] == "Goodbye %%SENTENCE%%. See you soon!"
        assert template["placeholders"] == ["SENTENCE"]
        assert template["status"] == "APPROVED"
        assert template["waba_id"] == tenant.waba_id


async def test_search_and_filters(api: httpx.AsyncClient, tenants: tuple[SeededTenant, ...]) -> None:
    tenant_a = tenants[0]
    assert [t["name"] for t in await listing(api, tenant_a, q="SHIPPED")] == ["order_shipped_v2"]
    assert [t["name"] for t in await listing(api, tenant_a, q="see you soon")] == ["open_template"]
    assert {t["name"] for t in await listing(api, tenant_a, language="es_MX")} == {"appointment_reminder"}
    marketing = await listing(api, tenant_a, category="marketing")
    assert marketing
    assert {t["category"] for t in marketing} == {"MARKETING"}
    pending = await listing(api, tenant_a, status="PENDING")
    assert [t["name"] for t in pending] == ["loyalty_welcome"]


async def test_favourites_come_first_and_are_the_tenants_own(
    api: httpx.AsyncClient, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a, tenant_b = tenants
    spring_a = by_name(await listing(api, tenant_a), "spring_sale")

    r = await api.put(f"/v1/templates/{spring_a['template_id']}/favourite", headers=tenant_a.auth)
    assert r.status_code == 200, r.text
    assert r.json()["favourite"] is True
    again = await api.put(f"/v1/templates/{spring_a['template_id']}/favourite", headers=tenant_a.auth)
    assert again.status_code == 200

    first = (await listing(api, tenant_a))[0]
    assert (first["name"], first["favourite"]) == ("spring_sale", True)
    assert not by_name(await listing(api, tenant_b), "spring_sale")["favourite"]
    # Tenant A's template id means nothing to tenant B: 404, exactly like a missing one.
    foreign = await api.put(f"/v1/templates/{spring_a['template_id']}/favourite", headers=tenant_b.auth)
    missing = await api.put("/v1/templates/no-such-template/favourite", headers=tenant_b.auth)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json() == {"error": {"code": "not_found", "message": "template not found"}}

    r = await api.delete(f"/v1/templates/{spring_a['template_id']}/favourite", headers=tenant_a.auth)
    assert r.status_code == 200
    assert r.json()["favourite"] is False
    assert not by_name(await listing(api, tenant_a), "spring_sale")["favourite"]


async def test_a_tenants_own_templates_are_synced_and_invisible_to_others(
    api: httpx.AsyncClient, simulator: Simulator, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a, tenant_b = tenants
    await simulator.client.put_templates(tenant_a.waba_id, [CUSTOM])

    r = await api.post("/v1/templates/sync", headers=tenant_a.auth)
    assert r.status_code == 200, r.text

    custom = by_name(await listing(api, tenant_a), "order_delayed")
    assert custom["content"] == "Ciao %%1%%, il tuo ordine arriva il %%2%%."
    assert "order_delayed" not in {t["name"] for t in await listing(api, tenant_b)}
    r = await api.get(f"/v1/templates/{custom['template_id']}", headers=tenant_b.auth)
    assert r.status_code == 404


async def test_preview_renders_with_the_given_parameters(
    api: httpx.AsyncClient, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a = tenants[0]
    templates = await listing(api, tenant_a)
    goodbye = by_name(templates, "open_template")
    spring = by_name(templates, "spring_sale")

    r = await api.post(
        f"/v1/templates/{goodbye['template_id']}/preview",
        headers=tenant_a.auth,
        json={"parameters": {"SENTENCE": "and thanks"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["body"] == "Goodbye and thanks. See you soon!"

    r = await api.post(
        f"/v1/templates/{spring['template_id']}/preview",
        headers=tenant_a.auth,
        json={"parameters": ["Ana", "Ana", "20%", "May 1"]},
    )
    assert r.json()["header"] == "Spring sale for Ana"
    assert r.json()["buttons"] == ["Shop now", "Stop promotions"]

    wrong = await api.post(
        f"/v1/templates/{goodbye['template_id']}/preview", headers=tenant_a.auth, json={"parameters": {"NAME": "x"}}
    )
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "template_params"
    bad_body = await api.post(
        f"/v1/templates/{goodbye['template_id']}/preview", headers=tenant_a.auth, json={"parameters": 5}
    )
    assert bad_body.status_code == 422
    assert bad_body.json()["error"]["code"] == "invalid_request"


async def test_requests_without_a_valid_key_or_to_unknown_routes_get_json_errors(
    api: httpx.AsyncClient, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_a, tenant_b = tenants
    assert (await api.get("/v1/templates")).status_code == 401
    assert (await api.get("/v1/templates", headers={"Authorization": "Bearer nope"})).status_code == 401
    r = await api.post("/v1/templates", headers=tenant_a.auth)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = await api.get(f"/v1/recipients/{tenant_b.phone_number_id}/15551234567", headers=tenant_a.auth)
    assert r.status_code == 404
    r = await api.get(f"/v1/recipients/{tenant_a.phone_number_id}/not-a-number", headers=tenant_a.auth)
    assert r.status_code == 422


def test_every_route_is_documented(settings_env: dict[str, str]) -> None:
    schema = create_app(settings_for(OutboundSettings, settings_env)).openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            assert "200" in operation["responses"], f"{method.upper()} {path} has no response model"


async def test_a_template_webhook_brings_the_change_without_asking(
    api: httpx.AsyncClient, simulator: Simulator, publisher: EventPublisher, tenants: tuple[SeededTenant, ...]
) -> None:
    tenant_b = tenants[1]
    await simulator.client.put_templates(tenant_b.waba_id, [CUSTOM | {"name": "order_delayed_b"}])
    await publisher.publish(
        TemplateStatusEvent.new(
            tenant_id=tenant_b.tenant_id,
            payload=TemplateStatus(
                waba_id=tenant_b.waba_id,
                field="message_template_status_update",
                event="APPROVED",
                name="order_delayed_b",
                language="it",
            ),
        )
    )

    names: set[str] = set()
    for _ in range(200):
        names = {t["name"] for t in await listing(api, tenant_b)}
        if "order_delayed_b" in names:
            break
        await asyncio.sleep(0.05)
    assert "order_delayed_b" in names
