"""The webhook delivery in ingest's OpenAPI document: it is served by the plain ASGI receiver, not a FastAPI route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from waflow_common.http import error_body

from waflow_ingest.api import ACCEPTED_EXAMPLE, WEBHOOK_PREFIX, WebhookAccepted


def _error_example(code: str, message: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": error_body(code, message)}}}


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
                    "schema": {"type": "string"},
                    "example": "100200300400500",
                },
                {
                    "name": "X-Hub-Signature-256",
                    "in": "header",
                    "required": True,
                    "description": "sha256=HMAC-SHA256 of the raw body with the app secret",
                    "schema": {"type": "string"},
                    "example": "sha256=4f1c…",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "description": "Meta's webhook body, signed as sent"},
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
                "400": _error_example(
                    "invalid_webhook",
                    "body is not JSON",
                    "the body is not JSON (JSON that is not a readable webhook is archived, dead-lettered, 200)",
                ),
                "401": _error_example("bad_signature", "signature mismatch", "missing or wrong signature"),
                "404": _error_example("not_found", "unknown app", "no such app"),
                "413": _error_example("too_large", "body too large", "body over the size limit"),
                "503": _error_example("unavailable", "Kafka unavailable", "Kafka did not acknowledge; retry"),
            },
        }
        schema["paths"].setdefault(WEBHOOK_PREFIX + "{app_id}", {})["post"] = operation
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
