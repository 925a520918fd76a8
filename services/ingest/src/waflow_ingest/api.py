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
)
from waflow_common.kafka import PublishError
from waflow_common.logs import correlation_id_var
from waflow_common.producer import RecordProducer, event_record
from waflow_common.settings import CommonSettings
from waflow_common.tenants import Tenant, TenantRegistry

from waflow_ingest.dead_letters import item_dead_letters
from waflow_ingest.domain import InvalidWebhook, ItemFailure, NumberOwner, normalise, parse_body
from waflow_ingest.signature import signature_valid

log = logging.getLogger(__name__)

WEBHOOKS = Counter("waflow_ingest_webhooks_total", "Webhook deliveries by outcome", ["outcome"])
ACCEPTED = WEBHOOKS.labels("accepted")
EVENTS = Counter("waflow_ingest_events_total", "Events published to wa.inbound.v1", ["event_type"])
UNROUTED = Counter("waflow_ingest_unrouted_entries_total", "Entries for numbers no tenant owns (archived only)")
FOREIGN = Counter(
    "waflow_ingest_foreign_entries_total",
    "Entries for numbers of tenants under another Meta app than the one that signed (archived only)",
)
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


ACCEPTED_EXAMPLE: dict[str, Any] = {"status": "accepted", "events": 3, "dead_lettered": 0, "unrouted": 0, "foreign": 0}


class WebhookAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ACCEPTED_EXAMPLE]})
    status: Literal["accepted"] = "accepted"
    events: int = Field(description="events published to wa.inbound.v1")
    dead_lettered: int = Field(
        description="parts of the delivery that could not be read (the whole body, an entry, a message...), each "
        "sent to wa.inbound.v1.dlq with the reason; the body itself is archived on whatsapp.webhooks.v1"
    )
    unrouted: int = Field(description="entries for numbers no tenant owns: archived, not routed")
    foreign: int = Field(
        description="entries for numbers registered under another Meta app than the one that signed: archived, "
        "not routed"
    )


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "too_large"


class BadSignature(Unauthorized):
    code = "bad_signature"


class BadWebhook(ApiError):
    """An authentic delivery whose bytes are not JSON: 400.

    Anything that is not 2xx makes Meta deliver the same bytes again for up to 7 days, so an authentic body that is
    JSON but cannot be understood (wrong types, missing fields, not a WhatsApp object at all) answers 200: it is
    archived whole, dead-lettered with the reason, and a retry could only repeat it. Bytes that are not JSON are
    different: Meta's serialiser never produces them, so they come from someone holding the app secret (a
    developer, a broken proxy that re-signs), who needs a clear error more than an archive entry. An unsigned or
    wrongly signed body is refused with 401 before it is even parsed.
    """

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
        app_id=app_id,
        owner_of_number=lambda n: _owner(registry.tenant_for_number(n)),
        owner_of_waba=lambda w: _owner(registry.tenant_for_waba(w)),
        correlation_id=correlation_id,
        causation_id=archive_id,
        now=now,
    )
    text = body.decode()  # orjson accepted it, so it is UTF-8
    archive = WebhookReceivedEvent.new(
        tenant_id=None,
        payload=WebhookReceived(
            app_id=app_id,
            body=text,
            signature=signature,
            received_at=now,
            phone_number_ids=result.phone_number_ids,
            tenant_ids=result.tenant_ids,
            unrouted_phone_number_ids=result.unrouted_phone_number_ids,
            foreign_phone_number_ids=result.foreign_phone_number_ids,
        ),
        event_id=archive_id,
        correlation_id=correlation_id,
        clock=lambda: now,
    )
    records = [event_record(archive, ctx.settings)]
    published: list[Any] = []
    for event in result.events:
        try:
            records.append(event_record(event, ctx.settings))
            published.append(event)
        except (ValueError, TypeError) as exc:  # the domain bounds depth and size, so this is a last resort
            reason = f"{event.event_type} cannot be serialised: {exc}"
            result.failures.append(ItemFailure(event.tenant_id, reason, None))
    records.extend(
        item_dead_letters(
            result.failures,
            ctx.settings,
            app_id=app_id,
            correlation_id=correlation_id,
            now=now,
            body=text,
            archive_id=str(archive_id),
        )
    )
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
    if result.foreign_entries:
        FOREIGN.inc(result.foreign_entries)
        log.warning(
            "entries for numbers of another app's tenants were archived, not routed",
            extra={"app_id": app_id, "phone_number_ids": result.foreign_phone_number_ids},
        )
    for event in published:
        _event_counter(event.event_type).inc()
    if result.failures:
        ITEM_FAILURES.inc(len(result.failures))
        log.warning(
            "parts of a delivery could not be read and were dead-lettered",
            extra={"reasons": [f.reason[:300] for f in result.failures[:5]]},
        )
    return {
        "status": "accepted",
        "events": len(published),
        "dead_lettered": len(result.failures),
        "unrouted": result.unrouted_entries,
        "foreign": result.foreign_entries,
    }


@functools.cache
def _event_counter(event_type: str) -> Any:
    return EVENTS.labels(event_type)


def _owner(tenant: Tenant | None) -> NumberOwner | None:
    return NumberOwner(tenant.tenant_id, tenant.record.app_id) if tenant is not None else None


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
        duplicated = False
        correlation_id = ""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"x-hub-signature-256":
                duplicated = signature is not None
                signature = value.decode("latin-1")
            elif name == CORRELATION_HEADER_BYTES:
                correlation_id = value.decode("latin-1")[:200]
        correlation_id = correlation_id or _new_correlation_id()
        token = correlation_id_var.set(correlation_id)  # what log_context does, without a generator per call
        try:
            try:
                body = await _read_body(receive, length, self._ctx.max_body_bytes)
                if duplicated:  # two signatures: which one was checked would be the sender's choice
                    raise BadSignature("more than one X-Hub-Signature-256 header")
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
