"""The served app without Kafka: what reaches the webhook receiver, and how the OpenAPI document describes it."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from waflow_ingest.api import WEBHOOK_PREFIX
from waflow_ingest.main import IngestSettings, create_app


@pytest.fixture
def settings() -> IngestSettings:
    return IngestSettings(
        kafka_bootstrap_servers="127.0.0.1:9",
        waflow_secrets_key=base64.b64encode(b"k" * 32).decode(),  # type: ignore[arg-type]
    )


async def test_the_webhook_delivery_is_documented_with_examples(settings: IngestSettings) -> None:
    schema: dict[str, Any] = create_app(settings).api.openapi()
    item = schema["paths"][WEBHOOK_PREFIX + "{app_id}"]
    assert set(item) == {"get", "post"}
    post = item["post"]
    assert {"200", "400", "401", "404", "413", "503"} <= set(post["responses"])
    assert post["responses"]["200"]["content"]["application/json"]["example"]["status"] == "accepted"
    assert "WebhookAccepted" in schema["components"]["schemas"]
    assert [p["name"] for p in post["parameters"]] == ["app_id", "X-Hub-Signature-256"]


async def test_deliveries_to_an_unknown_app_or_a_wrong_path_get_json_errors(settings: IngestSettings) -> None:
    app = create_app(settings)  # not started: the registry is empty, so every app is unknown
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        unknown = await http.post(WEBHOOK_PREFIX + "123", content=b"{}", headers={"X-Correlation-Id": "c-1"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"
        assert unknown.headers["x-correlation-id"] == "c-1"
        too_deep = await http.post(WEBHOOK_PREFIX + "123/extra", content=b"{}")
        assert too_deep.status_code in (404, 405)
        assert "error" in too_deep.json()
        no_app = await http.post(WEBHOOK_PREFIX, content=b"{}")
        assert no_app.status_code in (404, 405)
        assert "error" in no_app.json()
