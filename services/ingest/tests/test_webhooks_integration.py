"""Ingest against the real Kafka: signed webhooks become events; bad deliveries publish nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_common.settings import CommonSettings
from waflow_ingest.main import IngestSettings, create_app
from waflow_ingest.signature import sign
from waflow_testing.fixtures import (
    FIXTURES,
    SeededTenant,
    TopicReader,
    put_test_tenant,
    serve,
    settings_for,
)

pytestmark = pytest.mark.integration

SAMPLES = sorted(p.name for p in (FIXTURES / "whatsapp").glob("*.json"))


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def ingest_url(settings_env: dict[str, str], tenants: tuple[SeededTenant, SeededTenant]) -> AsyncIterator[str]:
    app = create_app(settings_for(IngestSettings, settings_env, ingest_max_body_bytes=256 * 1024))
    async with serve(app) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def inbound(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.INBOUND) as reader:
        yield reader


@pytest_asyncio.fixture(loop_scope="session")
async def archive(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.WEBHOOKS) as reader:
        yield reader


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def compact(obj: Any) -> bytes:
    """Meta's serialisation: compact, non-ASCII escaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def sample_bytes(name: str) -> bytes:
    return compact(json.loads((FIXTURES / "whatsapp" / name).read_text()))


def expected_items(body: dict[str, Any]) -> int:
    count = 0
    for entry in body["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            if change["field"] != "messages":
                count += 1
                continue
            count += len(value.get("messages", [])) + len(value.get("statuses", []))
            if value.get("errors") and not value.get("messages") and not value.get("statuses"):
                count += 1
    return count


async def post(
    http: httpx.AsyncClient,
    url: str,
    tenant: SeededTenant,
    body: bytes,
    *,
    correlation_id: str,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent_headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(secret or tenant.app_secret, body),
        "X-Correlation-Id": correlation_id,
    } | (headers or {})
    return await http.post(f"{url}/webhooks/whatsapp/{tenant.app_id}", content=body, headers=sent_headers)


def of(correlation_id: str) -> Any:
    return lambda value: value.get("correlation_id") == correlation_id


@pytest.mark.parametrize("name", SAMPLES)
async def test_every_sample_arrives_typed_with_its_raw_body(
    name: str,
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    archive: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    body = sample_bytes(name)
    corr = str(uuid.uuid4())
    response = await post(http, ingest_url, tenants[0], body, correlation_id=corr)
    assert response.status_code == 200, response.text
    expected = expected_items(json.loads(body))
    records = await inbound.read_records(expected, where=of(corr))
    assert len(records) == expected
    for record in records:
        event = record.value
        assert event["event_type"] in {"message.received", "message.status", "template.status", "account.update"}
        assert record.headers["event_type"] == event["event_type"]
        assert record.headers["tenant_id"] == event["tenant_id"]
        if event["event_type"] in {"message.received", "message.status"}:
            customer = event["payload"]["user_id"] or event["payload"]["wa_id"]  # the BSUID when Meta gives one
            assert record.key == f"{event['tenant_id']}:{customer}"
    (raw,) = await archive.read(1, where=of(corr))
    assert raw["payload"]["body"] == body.decode()
    assert raw["payload"]["signature"] == sign(tenants[0].app_secret, body)


async def test_same_webhook_three_times_makes_identical_event_ids(
    ingest_url: str, http: httpx.AsyncClient, inbound: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    body = sample_bytes("multi_entry_batch.json")
    ids: list[list[str]] = []
    for _ in range(3):
        corr = str(uuid.uuid4())
        assert (await post(http, ingest_url, tenants[0], body, correlation_id=corr)).status_code == 200
        events = await inbound.read(6, where=of(corr))
        assert len(events) == 6  # 3 messages, 2 statuses, 1 value-level error
        ids.append(sorted(e["event_id"] for e in events))
    assert ids[0] == ids[1] == ids[2]
    tenants_seen = {e["tenant_id"] for e in events}
    assert tenants_seen == {tenants[0].tenant_id, tenants[1].tenant_id}


BAD_CASES = {
    "wrong signature": ({"secret": "not-the-app-secret"}, 401),
    "missing signature": ({"headers": {"X-Hub-Signature-256": ""}}, 401),
    "invalid json": ({"body": b"{not json"}, 400),
    "oversize body": ({"body": b'{"entry":[],"pad":"' + b"x" * (300 * 1024) + b'"}'}, 413),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
async def test_bad_deliveries_get_a_clear_4xx_and_publish_nothing(
    case: str,
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    archive: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    options, status = BAD_CASES[case]
    body = options.get("body", sample_bytes("text_message.json"))
    corr = str(uuid.uuid4())
    response = await post(
        http,
        ingest_url,
        tenants[0],
        body,
        correlation_id=corr,
        secret=options.get("secret"),
        headers=options.get("headers"),
    )
    assert response.status_code == status
    assert response.json()["error"]["code"]
    # A good delivery after it: once its events are there, anything the bad one published would be too.
    marker = str(uuid.uuid4())
    assert (
        await post(http, ingest_url, tenants[0], sample_bytes("status_read.json"), correlation_id=marker)
    ).is_success
    assert len(await archive.read(1, where=of(marker))) == 1
    assert await inbound.read(1, timeout=1.0, where=of(corr)) == []
    assert await archive.read(1, timeout=0.5, where=of(corr)) == []


async def test_unknown_app_is_404(ingest_url: str, http: httpx.AsyncClient) -> None:
    body = sample_bytes("text_message.json")
    r = await http.post(
        f"{ingest_url}/webhooks/whatsapp/999999", content=body, headers={"X-Hub-Signature-256": sign("x", body)}
    )
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": "unknown app"}}


async def test_verify_handshake(
    ingest_url: str, http: httpx.AsyncClient, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    tenant = tenants[0]
    url = f"{ingest_url}/webhooks/whatsapp/{tenant.app_id}"
    ok = await http.get(
        url, params={"hub.mode": "subscribe", "hub.verify_token": tenant.verify_token, "hub.challenge": "1158201444"}
    )
    assert ok.status_code == 200
    assert ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    wrong = await http.get(url, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"})
    assert wrong.status_code == 403
    wrong_mode = await http.get(
        url, params={"hub.mode": "unsubscribe", "hub.verify_token": tenant.verify_token, "hub.challenge": "1"}
    )
    assert wrong_mode.status_code == 403
    unknown = await http.get(
        f"{ingest_url}/webhooks/whatsapp/42",
        params={"hub.mode": "subscribe", "hub.verify_token": tenant.verify_token, "hub.challenge": "1"},
    )
    assert unknown.status_code == 403


async def test_unknown_number_is_archived_and_counted_not_routed(
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    archive: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    body_obj = json.loads((FIXTURES / "whatsapp" / "text_message.json").read_text())
    body_obj["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "100000000000001"
    corr = str(uuid.uuid4())
    before = await http.get(f"{ingest_url}/metrics")
    r = await post(http, ingest_url, tenants[0], compact(body_obj), correlation_id=corr)
    assert r.status_code == 200
    assert r.json()["unrouted"] == 1
    (raw,) = await archive.read(1, where=of(corr))
    assert raw["payload"]["unrouted_phone_number_ids"] == ["100000000000001"]
    assert raw["payload"]["tenant_ids"] == []
    assert await inbound.read(1, timeout=1.0, where=of(corr)) == []
    after = await http.get(f"{ingest_url}/metrics")
    assert unrouted(after.text) == unrouted(before.text) + 1


def unrouted(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("waflow_ingest_unrouted_entries_total "):
            return float(line.split()[1])
    return 0.0


async def test_a_tenant_added_with_the_admin_is_live_without_restart(
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    admin: Admin,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    new = SeededTenant(
        tenant_id=f"late-{uuid.uuid4().hex[:6]}",
        api_key=f"wf_{uuid.uuid4().hex}",
        app_id=tenants[0].app_id,
        app_secret=tenants[0].app_secret,
        verify_token=tenants[0].verify_token,
        phone_number_id=str(uuid.uuid4().int)[:15],
        waba_id=str(uuid.uuid4().int)[:15],
        display_phone_number="15550007777",
        access_token="access-token-late",
    )
    body_obj = json.loads((FIXTURES / "whatsapp" / "text_message.json").read_text())
    body_obj["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = new.phone_number_id
    body = compact(body_obj)
    first = await post(http, ingest_url, new, body, correlation_id=str(uuid.uuid4()))
    assert first.json()["unrouted"] == 1

    await put_test_tenant(admin, new)
    for _ in range(100):
        corr = str(uuid.uuid4())
        r = await post(http, ingest_url, new, body, correlation_id=corr)
        if r.json()["unrouted"] == 0:
            break
        await asyncio.sleep(0.05)
    (event,) = await inbound.read(1, where=of(corr))
    assert event["tenant_id"] == new.tenant_id


async def test_health_and_readiness(ingest_url: str, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{ingest_url}/healthz")).json() == {"status": "ok"}
    ready = await http.get(f"{ingest_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"kafka": True}
