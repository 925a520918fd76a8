"""The webhook delivery in ingest's OpenAPI document: it is served by the plain ASGI receiver, not a FastAPI route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from waflow_common.http import error_response

from waflow_ingest.api import ACCEPTED_EXAMPLE, WEBHOOK_PREFIX, WebhookAccepted

# Any JSON is read: what is not a readable webhook is archived and dead-lettered in a 200 answer (see BadWebhook),
# so the document promises no shape beyond JSON; only bytes that are not JSON answer 400.
WEBHOOK_BODY_SCHEMA: dict[str, Any] = {"description": "Meta's webhook body, signed as sent"}
SIGNATURE_EXAMPLE = "sha256=" + "4f1c" * 16


def document_webhook(api: FastAPI) -> None:
    """Adds the webhook delivery (served by WebhookReceiver, not by a FastAPI route) to the OpenAPI document."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})["WebhookAccepted"] = (
            WebhookAccepted.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        operation = {
            "tags": ["webhooks"],
            "summary": "A webhook delivery from Meta",
            "description": (
                "Checks X-Hub-Signature-256 over the raw body with the app's secret, archives the body on "
                "whatsapp.webhooks.v1 and publishes one event per message, status and update on wa.inbound.v1. "
                "Answers 200 only after Kafka acknowledged all of them; 503 asks Meta to retry."
            ),
            "operationId": "receive_webhook",
            "parameters": [
                {
                    "name": "app_id",
                    "in": "path",
                    "required": True,
                    "description": "the Meta app id this callback URL belongs to",
                    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
                    "example": "100200300400500",
                },
                {
                    "name": "X-Hub-Signature-256",
                    "in": "header",
                    "required": True,
                    "description": "sha256=HMAC-SHA256 of the raw body with the app secret",
                    "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
                    "example": SIGNATURE_EXAMPLE,
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": WEBHOOK_BODY_SCHEMA,
                        "example": {"object": "whatsapp_business_account", "entry": []},
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Kafka acknowledged every event of the delivery",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/WebhookAccepted"},
                            "example": ACCEPTED_EXAMPLE,
                        }
                    },
                },
                "400": error_response(
                    "the body is not JSON (JSON that is not a readable webhook is archived, dead-lettered, 200)",
                    "invalid_webhook",
                    "body is not JSON",
                ),
                "401": error_response("missing or wrong signature", "bad_signature", "signature mismatch"),
                "404": error_response("no such app", "not_found", "unknown app"),
                "413": error_response("body over the size limit", "too_large", "body too large"),
                "503": error_response("Kafka did not acknowledge; retry", "unavailable", "Kafka unavailable"),
            },
        }
        schema["paths"].setdefault(WEBHOOK_PREFIX + "{app_id}", {})["post"] = operation
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
