"""Pure rules of ingest: the webhook signature, and turning Meta's webhook body into typed waflow events."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError
from waflow_common.events.envelope import Envelope, derived_event_id
from waflow_common.events.inbound import (
    AccountUpdate,
    AccountUpdateEvent,
    ButtonContent,
    ContactCard,
    ContactsContent,
    EditContent,
    InteractiveContent,
    LocationContent,
    MediaContent,
    MessageContent,
    MessageContext,
    MessageReceived,
    MessageReceivedEvent,
    MessageStatus,
    MessageStatusEvent,
    MetaErrorDetail,
    OrderContent,
    ReactionContent,
    Referral,
    ReferredProduct,
    RevokeContent,
    SystemContent,
    TemplateStatus,
    TemplateStatusEvent,
    TextContent,
    UnsupportedContent,
    meta_timestamp,
)

SIGNATURE_PREFIX = "sha256="
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
TEMPLATE_FIELDS = frozenset(
    {"message_template_status_update", "message_template_quality_update", "template_category_update"}
)


class InvalidWebhook(ValueError):
    """The body is not a WhatsApp Business Account webhook at all (answered 400)."""


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """HMAC-SHA256 of the raw bytes with the app secret, compared in constant time."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len(SIGNATURE_PREFIX) :].strip().lower())


def sign(secret: str, body: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ItemFailure:
    """One item of a batch that could not be read: dead-lettered alone, the rest of the batch goes on."""

    tenant_id: str | None
    reason: str
    item: dict[str, Any]


@dataclass
class Normalised:
    events: list[Envelope[Any]] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    phone_number_ids: list[str] = field(default_factory=list)
    tenant_ids: list[str] = field(default_factory=list)
    unrouted_phone_number_ids: list[str] = field(default_factory=list)
    unrouted_entries: int = 0


# Looks a number (or a WABA, for fields without metadata) up in the registry: the owning tenant's id or None.
TenantLookup = Callable[[str], str | None]


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidWebhook(f"body is not JSON: {exc}") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("entry"), list):
        raise InvalidWebhook("body is not a webhook: an object with an `entry` list is expected")
    if parsed.get("object") not in (None, "whatsapp_business_account"):
        raise InvalidWebhook(f"unsupported webhook object {parsed.get('object')!r}")
    return parsed


def normalise(
    body: dict[str, Any],
    *,
    tenant_for_number: TenantLookup,
    tenant_for_waba: TenantLookup,
    correlation_id: str,
    causation_id: Any = None,
    now: datetime,
) -> Normalised:
    """Every entry, every change, every message and status of a batch, each as its own event."""
    out = Normalised()
    for entry in body["entry"]:
        if not isinstance(entry, dict):
            out.failures.append(ItemFailure(None, "entry is not an object", {"entry": entry}))
            continue
        waba_id = str(entry.get("id", ""))
        for change in entry.get("changes") or []:
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                out.failures.append(ItemFailure(None, "change without a value object", {"change": change}))
                continue
            _normalise_change(
                out, waba_id, entry, change, tenant_for_number, tenant_for_waba, correlation_id, causation_id, now
            )
    return out


def _note_number(out: Normalised, phone_number_id: str, tenant_id: str | None) -> None:
    if phone_number_id and phone_number_id not in out.phone_number_ids:
        out.phone_number_ids.append(phone_number_id)
    if tenant_id is None:
        if phone_number_id not in out.unrouted_phone_number_ids:
            out.unrouted_phone_number_ids.append(phone_number_id)
    elif tenant_id not in out.tenant_ids:
        out.tenant_ids.append(tenant_id)


def _normalise_change(
    out: Normalised,
    waba_id: str,
    entry: dict[str, Any],
    change: dict[str, Any],
    tenant_for_number: TenantLookup,
    tenant_for_waba: TenantLookup,
    correlation_id: str,
    causation_id: Any,
    now: datetime,
) -> None:
    field_name = str(change.get("field", ""))
    value: dict[str, Any] = change["value"]
    common = {"correlation_id": correlation_id, "causation_id": causation_id, "clock": lambda: now}

    if field_name != "messages":
        tenant_id = tenant_for_waba(waba_id)
        phone_number_id = str(value.get("phone_number_id") or value.get("metadata", {}).get("phone_number_id") or "")
        if tenant_id is None:
            out.unrouted_entries += 1
            _note_number(out, phone_number_id or f"waba:{waba_id}", None)
            return
        if phone_number_id:
            _note_number(out, phone_number_id, tenant_id)
        elif tenant_id not in out.tenant_ids:
            out.tenant_ids.append(tenant_id)
        occurred = meta_timestamp(entry["time"]) if isinstance(entry.get("time"), int | str) else now
        identity = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        event_id = derived_event_id(tenant_id, field_name, str(entry.get("time", "")), identity)
        try:
            if field_name in TEMPLATE_FIELDS:
                out.events.append(
                    TemplateStatusEvent.new(
                        tenant_id=tenant_id,
                        payload=_template_status(waba_id, field_name, value),
                        occurred_at=occurred,
                        event_id=event_id,
                        **common,
                    )
                )
            else:
                out.events.append(
                    AccountUpdateEvent.new(
                        tenant_id=tenant_id,
                        payload=AccountUpdate(
                            waba_id=waba_id,
                            field=field_name,
                            event=str(value["event"]) if value.get("event") is not None else None,
                            phone_number_id=phone_number_id or None,
                            value=value,
                        ),
                        occurred_at=occurred,
                        event_id=event_id,
                        **common,
                    )
                )
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            out.failures.append(ItemFailure(tenant_id, f"{field_name}: {exc}", value))
        return

    metadata = value.get("metadata") or {}
    phone_number_id = str(metadata.get("phone_number_id", ""))
    tenant_id = tenant_for_number(phone_number_id) if phone_number_id else None
    _note_number(out, phone_number_id, tenant_id)
    if tenant_id is None:
        # Kept in the raw archive (whatsapp.webhooks.v1) and counted; never routed to a guessed tenant.
        out.unrouted_entries += 1
        return
    display = metadata.get("display_phone_number")
    profiles = {
        str(c.get("wa_id")): (c.get("profile") or {}).get("name")
        for c in value.get("contacts") or []
        if isinstance(c, dict)
    }
    for raw in value.get("messages") or []:
        try:
            received = _message(raw, waba_id, phone_number_id, display, profiles)
            out.events.append(
                MessageReceivedEvent.new(
                    tenant_id=tenant_id,
                    payload=received,
                    occurred_at=received.timestamp,
                    event_id=derived_event_id(tenant_id, received.wamid),
                    **common,
                )
            )
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            out.failures.append(ItemFailure(tenant_id, f"message: {exc}", raw if isinstance(raw, dict) else {}))
    for raw in value.get("statuses") or []:
        try:
            status = _status(raw, waba_id, phone_number_id)
            out.events.append(
                MessageStatusEvent.new(
                    tenant_id=tenant_id,
                    payload=status,
                    occurred_at=status.timestamp,
                    event_id=derived_event_id(tenant_id, status.wamid, status.status, str(raw["timestamp"])),
                    **common,
                )
            )
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            out.failures.append(ItemFailure(tenant_id, f"status: {exc}", raw if isinstance(raw, dict) else {}))
    if value.get("errors") and not value.get("messages") and not value.get("statuses"):
        # System, app or account problems (e.g. 130429, 131000) arrive as value-level errors with nothing else.
        identity = orjson.dumps(value["errors"], option=orjson.OPT_SORT_KEYS).decode()
        out.events.append(
            AccountUpdateEvent.new(
                tenant_id=tenant_id,
                payload=AccountUpdate(
                    waba_id=waba_id, field="messages", event="ERRORS", phone_number_id=phone_number_id, value=value
                ),
                event_id=derived_event_id(tenant_id, "errors", phone_number_id, identity),
                **common,
            )
        )


def _errors(raw: Any) -> list[MetaErrorDetail]:
    errors = []
    for e in raw or []:
        details = (e.get("error_data") or {}).get("details")
        errors.append(
            MetaErrorDetail(
                code=int(e["code"]), title=e.get("title"), message=e.get("message"), details=details, href=e.get("href")
            )
        )
    return errors


def _message(
    raw: dict[str, Any], waba_id: str, phone_number_id: str, display: str | None, profiles: dict[str, str | None]
) -> MessageReceived:
    wa_id = str(raw["from"])
    context = raw.get("context")
    referral = raw.get("referral")
    return MessageReceived(
        wamid=str(raw["id"]),
        phone_number_id=phone_number_id,
        display_phone_number=display,
        waba_id=waba_id,
        wa_id=wa_id,
        profile_name=profiles.get(wa_id),
        type=str(raw.get("type", "unknown")),
        timestamp=meta_timestamp(raw["timestamp"]),
        content=_content(raw),
        context=_context(context) if isinstance(context, dict) else None,
        referral=Referral.model_validate(referral) if isinstance(referral, dict) else None,
        errors=_errors(raw.get("errors")),
    )


def _context(raw: dict[str, Any]) -> MessageContext:
    product = raw.get("referred_product")
    return MessageContext(
        quoted_wamid=raw.get("id"),
        quoted_from=raw.get("from"),
        forwarded=bool(raw.get("forwarded", False)),
        frequently_forwarded=bool(raw.get("frequently_forwarded", False)),
        referred_product=ReferredProduct.model_validate(product) if isinstance(product, dict) else None,
    )


def _content(raw: dict[str, Any]) -> MessageContent:
    """The typed content of a message; anything unknown or unreadable is kept raw as `unsupported`."""
    kind = str(raw.get("type", "unknown"))
    body = raw.get(kind)
    try:
        content = _typed_content(kind, body)
    except (ValidationError, KeyError, TypeError, ValueError):
        content = None
    if content is not None:
        return content
    original = kind
    if kind == "unsupported" and isinstance(body, dict) and body.get("type"):
        original = str(body["type"])
    return UnsupportedContent(original_type=original, raw={k: v for k, v in raw.items() if k not in ("from", "id")})


def _typed_content(kind: str, body: Any) -> MessageContent | None:
    match kind:
        case "text":
            return TextContent.model_validate(body)
        case _ if kind in MEDIA_TYPES:
            return MediaContent.model_validate({**body, "type": kind})
        case "location":
            return LocationContent.model_validate(body)
        case "contacts":
            return ContactsContent(contacts=[ContactCard.model_validate(c) for c in body])
        case "interactive":
            sub = str(body["type"])
            detail = body.get(sub) or {}
            return InteractiveContent(
                kind=sub,
                reply_id=detail.get("id"),
                title=detail.get("title"),
                description=detail.get("description"),
                flow_name=detail.get("name"),
                flow_body=detail.get("body"),
                response_json=detail.get("response_json"),
            )
        case "button":
            return ButtonContent.model_validate(body)
        case "reaction":
            return ReactionContent(message_id=body["message_id"], emoji=body.get("emoji") or None)
        case "order":
            return OrderContent.model_validate(body)
        case "system":
            return SystemContent(body=body.get("body"), system_type=body.get("type"), new_wa_id=body.get("wa_id"))
        case "edit":
            return EditContent.model_validate(body)
        case "revoke":
            return RevokeContent.model_validate(body)
    return None


def _status(raw: dict[str, Any], waba_id: str, phone_number_id: str) -> MessageStatus:
    return MessageStatus(
        wamid=str(raw["id"]),
        phone_number_id=phone_number_id,
        waba_id=waba_id,
        wa_id=str(raw.get("recipient_id", "")),
        status=str(raw["status"]),
        timestamp=meta_timestamp(raw["timestamp"]),
        conversation=raw.get("conversation"),
        pricing=raw.get("pricing"),
        errors=_errors(raw.get("errors")),
        biz_opaque_callback_data=raw.get("biz_opaque_callback_data"),
    )


def _template_status(waba_id: str, field_name: str, value: dict[str, Any]) -> TemplateStatus:
    known = {"event", "message_template_id", "message_template_name", "message_template_language", "reason"}
    known |= {"message_template_category"}
    event = value.get("event")
    if event is None:
        event = "QUALITY_CHANGED" if field_name == "message_template_quality_update" else "CATEGORY_CHANGED"
    template_id = value.get("message_template_id")
    return TemplateStatus(
        waba_id=waba_id,
        field=field_name,
        event=str(event),
        template_id=str(template_id) if template_id is not None else None,
        name=value.get("message_template_name"),
        language=value.get("message_template_language"),
        reason=value.get("reason"),
        category=value.get("message_template_category") or value.get("new_category"),
        detail={k: v for k, v in value.items() if k not in known},
    )
