"""Ingest's HTTP routes: Meta's verify handshake and webhook deliveries."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.events.webhooks import WebhookReceived, WebhookReceivedEvent
from waflow_common.http import ApiError, NotFound, ServiceUnavailable, Unauthorized, error_body
from waflow_common.kafka import EventPublisher, PublishError
from waflow_common.logs import log_context
from waflow_common.tenants import TenantRegistry

from waflow_ingest.dead_letters import item_dead_letters
from waflow_ingest.domain import InvalidWebhook, normalise, parse_body, signature_valid

log = logging.getLogger(__name__)

WEBHOOKS = Counter("waflow_ingest_webhooks_total", "Webhook deliveries by outcome", ["outcome"])
EVENTS = Counter("waflow_ingest_events_total", "Events published to wa.inbound.v1", ["event_type"])
UNROUTED = Counter("waflow_ingest_unrouted_entries_total", "Entries for numbers no tenant owns (archived only)")
ITEM_FAILURES = Counter("waflow_ingest_item_failures_total", "Batch items dead-lettered")
LATENCY = Histogram("waflow_ingest_webhook_seconds", "Time to accept a webhook delivery")

router = APIRouter(prefix="/webhooks/whatsapp", tags=["webhooks"])


@dataclass(frozen=True)
class IngestContext:
    registry: TenantRegistry
    publisher: EventPublisher
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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        # The server frames the body by Content-Length, so it cannot grow past what was declared.
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/{app_id}",
    summary="A webhook delivery from Meta",
    response_model=WebhookAccepted,
    description=(
        "Checks X-Hub-Signature-256 over the raw body with the app's secret, archives the body on "
        "whatsapp.webhooks.v1 and publishes one event per message, status and update on wa.inbound.v1. "
        "Answers 200 only after Kafka acknowledged all of them; 503 asks Meta to retry."
    ),
    responses={
        400: {"content": {"application/json": {"example": error_body("invalid_webhook", "body is not JSON")}}},
        401: {"content": {"application/json": {"example": error_body("bad_signature", "signature mismatch")}}},
        404: {"content": {"application/json": {"example": error_body("not_found", "unknown app")}}},
        413: {"content": {"application/json": {"example": error_body("too_large", "body too large")}}},
        503: {"content": {"application/json": {"example": error_body("unavailable", "Kafka unavailable")}}},
    },
)
async def receive(request: Request, app_id: AppId) -> Response:
    ctx = _context(request)
    with LATENCY.time():
        try:
            result = await _receive(request, ctx, app_id)
        except ApiError as exc:
            WEBHOOKS.labels(exc.code).inc()
            raise
        WEBHOOKS.labels("accepted").inc()
        # Serialised directly: this is the hot path, and the model above documents the shape.
        return Response(orjson.dumps(result.model_dump()), media_type="application/json")


async def _receive(request: Request, ctx: IngestContext, app_id: str) -> WebhookAccepted:
    app = ctx.registry.app(app_id)
    if app is None:
        raise NotFound("unknown app")
    body = await _read_body(request, ctx.max_body_bytes)
    signature = request.headers.get("x-hub-signature-256")
    if not signature_valid(app.app_secret, body, signature):
        raise BadSignature("missing or wrong X-Hub-Signature-256")
    assert signature is not None
    try:
        parsed = parse_body(body)
    except InvalidWebhook as exc:
        raise BadWebhook(str(exc)) from exc

    now = ctx.clock()
    correlation_id: str = request.state.correlation_id
    archive_id = derived_event_id(app_id, hashlib.sha256(body).hexdigest())
    result = normalise(
        parsed,
        tenant_for_number=lambda n: _tenant_id(ctx.registry.tenant_for_number(n)),
        tenant_for_waba=lambda w: _tenant_id(ctx.registry.tenant_for_waba(w)),
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
    with log_context(correlation_id=correlation_id):
        try:
            await ctx.publisher.publish_many([archive, *result.events])
            for letter in item_dead_letters(result.failures, app_id=app_id, correlation_id=correlation_id, now=now):
                await ctx.publisher.publish_raw(letter.topic, letter.value, key=letter.key, headers=letter.headers)
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
        EVENTS.labels(event.event_type).inc()
    ITEM_FAILURES.inc(len(result.failures))
    return WebhookAccepted(
        events=len(result.events), dead_lettered=len(result.failures), unrouted=result.unrouted_entries
    )


def _tenant_id(tenant: Any) -> str | None:
    return tenant.tenant_id if tenant is not None else None
