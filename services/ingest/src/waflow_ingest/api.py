"""Ingest's HTTP surface: Meta's verify handshake (a FastAPI route) and webhook deliveries (the hot path)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import random
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.events.webhooks import WebhookReceived, WebhookReceivedEvent
from waflow_common.http import (
    CORRELATION_HEADER,
    ApiError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    error_body,
    error_response,
)
from waflow_common.kafka import PublishError
from waflow_common.logs import correlation_id_var
from waflow_common.producer import RecordProducer, event_record
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_ingest.dead_letters import item_dead_letters
from waflow_ingest.domain import InvalidWebhook, normalise, parse_body, signature_valid

log = logging.getLogger(__name__)

WEBHOOKS = Counter("waflow_ingest_webhooks_total", "Webhook deliveries by outcome", ["outcome"])
ACCEPTED = WEBHOOKS.labels("accepted")
EVENTS = Counter("waflow_ingest_events_total", "Events published to wa.inbound.v1", ["event_type"])
UNROUTED = Counter("waflow_ingest_unrouted_entries_total", "Entries for numbers no tenant owns (archived only)")
ITEM_FAILURES = Counter("waflow_ingest_item_failures_total", "Batch items dead-lettered")
LATENCY = Histogram("waflow_ingest_webhook_seconds", "Time to accept a webhook delivery")

WEBHOOK_PREFIX = "/webhooks/whatsapp/"
CORRELATION_HEADER_BYTES = CORRELATION_HEADER.lower().encode()

router = APIRouter(prefix=WEBHOOK_PREFIX.rstrip("/"), tags=["webhooks"])


@dataclass(frozen=True)
class IngestContext:
    registry: TenantRegistry
    producer: RecordProducer
    settings: CommonSettings
    clock: Clock
    max_body_bytes: int


class WebhookAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "accepted", "events": 3, "dead_lettered": 0, "unrouted": 0}]}
    )
    status: Literal["accepted"] = "accepted"
    events: int = Field(description="events published to wa.inbound.v1")
    dead_lettered: int = Field(description="items of the batch that could not be read, sent to wa.inbound.v1.dlq")
    unrouted: int = Field(description="entries for numbers no tenant owns: archived, not routed")


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "too_large"


class BadSignature(Unauthorized):
    code = "bad_signature"


class BadWebhook(ApiError):
    status_code = 400
    code = "invalid_webhook"


def _context(request: Request) -> IngestContext:
    ctx: IngestContext = request.app.state.ingest
    return ctx


AppId = Annotated[str, Path(description="the Meta app id this callback URL belongs to", examples=["100200300400500"])]


@router.get(
    "/{app_id}",
    summary="Meta's verification handshake",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "hub.challenge echoed verbatim", "content": {"text/plain": {"example": "1158201444"}}},
        403: {
            "description": "wrong mode or verify token",
            "content": {"application/json": {"example": error_body("forbidden", "verification failed")}},
        },
    },
)
async def verify(
    request: Request,
    app_id: AppId,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> Any:
    app = _context(request).registry.app(app_id)
    if (
        app is None
        or mode != "subscribe"
        or challenge is None
        or token is None
        or not hmac.compare_digest(token.encode(), app.verify_token.encode())
    ):
        return JSONResponse(error_body("forbidden", "verification failed"), status_code=403)
    return PlainTextResponse(challenge)


async def accept_webhook(
    ctx: IngestContext, app_id: str, body: bytes, signature: str | None, correlation_id: str
) -> dict[str, Any]:
    """Checks, archives and routes one delivery; returns the WebhookAccepted body once Kafka acknowledged all."""
    app = ctx.registry.app(app_id)
    if app is None:
        raise NotFound("unknown app")
    if signature is None or not signature_valid(app.app_secret, body, signature):
        raise BadSignature("missing or wrong X-Hub-Signature-256")
    try:
        parsed = parse_body(body)
    except InvalidWebhook as exc:
        raise BadWebhook(str(exc)) from exc

    now = ctx.clock()
    archive_id = derived_event_id(app_id, hashlib.sha256(body).hexdigest())
    registry = ctx.registry
    result = normalise(
        parsed,
        tenant_for_number=lambda n: _tenant_id(registry.tenant_for_number(n)),
        tenant_for_waba=lambda w: _tenant_id(registry.tenant_for_waba(w)),
        correlation_id=correlation_id,
        causation_id=archive_id,
        now=now,
    )
    archive = WebhookReceivedEvent.new(
        tenant_id=None,
        payload=WebhookReceived(
            app_id=app_id,
            body=body.decode("utf-8", "replace"),
            signature=signature,
            received_at=now,
            phone_number_ids=result.phone_number_ids,
            tenant_ids=result.tenant_ids,
            unrouted_phone_number_ids=result.unrouted_phone_number_ids,
        ),
        event_id=archive_id,
        correlation_id=correlation_id,
        clock=lambda: now,
    )
    records = [
        event_record(archive, ctx.settings),
        *(event_record(e, ctx.settings) for e in result.events),
        *item_dead_letters(result.failures, ctx.settings, app_id=app_id, correlation_id=correlation_id, now=now),
    ]
    try:
        await ctx.producer.send_all(records)
    except PublishError as exc:
        log.warning("Kafka unavailable; asking Meta to retry", extra={"error": str(exc)})
        raise ServiceUnavailable("Kafka did not acknowledge the events; retry later") from exc
    if result.unrouted_entries:
        UNROUTED.inc(result.unrouted_entries)
        log.warning(
            "entries for numbers no tenant owns were archived, not routed",
            extra={"phone_number_ids": result.unrouted_phone_number_ids},
        )
    for event in result.events:
        _event_counter(event.event_type).inc()
    if result.failures:
        ITEM_FAILURES.inc(len(result.failures))
    return {
        "status": "accepted",
        "events": len(result.events),
        "dead_lettered": len(result.failures),
        "unrouted": result.unrouted_entries,
    }


@functools.cache
def _event_counter(event_type: str) -> Any:
    return EVENTS.labels(event_type)


def _tenant_id(tenant: Any) -> str | None:
    return tenant.tenant_id if tenant is not None else None


class _ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


class WebhookReceiver:
    """POST /webhooks/whatsapp/{app_id} as a plain ASGI app, the hot path.

    FastAPI's routing, dependency injection and middleware cost more per delivery than the delivery's own work,
    so `IngestApp` hands deliveries straight to this. It does what those would: the correlation id in the logs
    and echoed back, metrics, a 413 before reading an oversize body, and every error as the JSON error body.
    `document_webhook` describes it in the OpenAPI document.
    """

    def __init__(self, ctx: IngestContext) -> None:
        self._ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app_id: str) -> None:
        started = time.perf_counter()
        length: int | None = None
        signature: str | None = None
        correlation_id = ""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"x-hub-signature-256":
                signature = value.decode("latin-1")
            elif name == CORRELATION_HEADER_BYTES:
                correlation_id = value.decode("latin-1")[:200]
        correlation_id = correlation_id or _new_correlation_id()
        token = correlation_id_var.set(correlation_id)  # what log_context does, without a generator per call
        try:
            try:
                body = await _read_body(receive, length, self._ctx.max_body_bytes)
                result = await accept_webhook(self._ctx, app_id, body, signature, correlation_id)
            except _ClientGone:
                return
            except ApiError as exc:
                WEBHOOKS.labels(exc.code).inc()
                status, payload = exc.status_code, error_body(exc.code, exc.message, exc.details)
            except Exception:
                log.exception("unhandled error")
                status, payload = 500, error_body("internal", "internal error")
            else:
                ACCEPTED.inc()
                status, payload = 200, result
            await _respond(send, status, orjson.dumps(payload), correlation_id)
        finally:
            correlation_id_var.reset(token)
        LATENCY.observe(time.perf_counter() - started)


def _new_correlation_id() -> str:
    # A random UUID-shaped id; not a secret, so the cheap generator will do (uuid4 reads os.urandom per call).
    h = f"{random.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


async def _read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, correlation_id: str) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (CORRELATION_HEADER_BYTES, correlation_id.encode("latin-1")),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class IngestApp:
    """The ASGI app ingest serves: webhook deliveries go to the receiver, everything else to FastAPI."""

    def __init__(self, api: FastAPI, receiver: WebhookReceiver) -> None:
        self.api = api
        self._receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(WEBHOOK_PREFIX):
                app_id = path[len(WEBHOOK_PREFIX) :]
                if app_id and "/" not in app_id:
                    await self._receiver(scope, receive, send, app_id)
                    return
        await self.api(scope, receive, send)


# What the delivery's body must be for ingest to read it at all (else 400 `invalid_webhook`); whatever an entry
# holds beyond that is Meta's, and an item that cannot be read is dead-lettered in a 200 answer.
WEBHOOK_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Meta's webhook body, signed as sent",
    "required": ["entry"],
    "properties": {
        "object": {"type": "string", "enum": ["whatsapp_business_account"]},
        "entry": {"type": "array", "description": "one per WhatsApp Business Account; items are Meta's"},
    },
}
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
                            "example": {"status": "accepted", "events": 3, "dead_lettered": 0, "unrouted": 0},
                        }
                    },
                },
                "400": error_response("not a WhatsApp webhook body", "invalid_webhook", "body is not JSON"),
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
