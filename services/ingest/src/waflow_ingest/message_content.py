"""What a customer's message holds: Meta's per-type object as waflow's typed content (REFERENCE §5)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from waflow_common.events.inbound import (
    ButtonContent,
    ContactCard,
    ContactsContent,
    EditContent,
    InteractiveContent,
    LocationContent,
    MediaContent,
    MessageContent,
    MessageContext,
    MetaErrorDetail,
    OrderContent,
    ReactionContent,
    ReferredProduct,
    RevokeContent,
    SystemContent,
    TextContent,
    UnsupportedContent,
)

from waflow_ingest.webhook_models import MAX_TEXT_CHARS, Context, MetaError, TypeName

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
KNOWN_TYPES = MEDIA_TYPES | {
    "text",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "edit",
    "revoke",
}


_type_name: TypeAdapter[str] = TypeAdapter(TypeName)


class UnreadableContent(ValueError):
    """A message of a type waflow knows whose object is not the shape Meta documents: dead-lettered."""


def content(kind: str, raw: dict[str, Any]) -> MessageContent:
    """The typed content of a message. Meta's `unsupported` and types this version does not know are kept raw, so
    the agent sees that the customer sent something; a known type whose object cannot be read raises."""
    if kind not in KNOWN_TYPES:
        original = kind
        if kind == "unsupported":
            detail = raw.get("unsupported")
            named = detail.get("type") if isinstance(detail, dict) else None
            if isinstance(named, str) and named:
                original = _type_name.validate_python(named)
        return UnsupportedContent(original_type=original, raw={k: v for k, v in raw.items() if k not in ("from", "id")})
    body = raw.get(kind)
    try:
        return _typed(kind, body)
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnreadableContent(f"{kind}: not the object Meta documents ({type(exc).__name__}: {exc})") from exc


def _typed(kind: str, body: Any) -> MessageContent:
    match kind:
        case "text":
            _bounded(body, "body")
            return TextContent.model_validate(body)
        case _ if kind in MEDIA_TYPES:
            _bounded(body, "caption")
            return MediaContent.model_validate({**body, "type": kind})
        case "location":
            return LocationContent.model_validate(body)
        case "contacts":
            if not isinstance(body, list):
                raise TypeError("contacts is not a list")
            return ContactsContent(contacts=[ContactCard.model_validate(c) for c in body])
        case "interactive":
            sub = _type_name.validate_python(body["type"])
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
            edited = EditContent.model_validate(body)
            _check_edited(edited.message)
            return edited
        case _:  # "revoke": KNOWN_TYPES holds nothing else
            return RevokeContent.model_validate(body)


def _bounded(body: Any, name: str) -> None:
    """What the customer typed (a text, a caption) is at most MAX_TEXT_CHARS (see webhook_models)."""
    typed = body.get(name) if isinstance(body, dict) else None
    if isinstance(typed, str) and len(typed) > MAX_TEXT_CHARS:
        raise UnreadableContent(f"{name} of {len(typed)} characters, more than the {MAX_TEXT_CHARS} WhatsApp allows")


def _check_edited(message: dict[str, Any]) -> None:
    """The new content of an edit is bounded like a message's own."""
    kind = message.get("type")
    if kind == "text":
        _bounded(message.get("text"), "body")
    elif kind in MEDIA_TYPES:
        _bounded(message.get(kind), "caption")


def context(raw: Context) -> MessageContext:
    product = raw.referred_product
    return MessageContext(
        quoted_wamid=raw.id,
        quoted_from=raw.from_,
        forwarded=raw.forwarded,
        frequently_forwarded=raw.frequently_forwarded,
        referred_product=ReferredProduct(catalog_id=product.catalog_id, product_retailer_id=product.product_retailer_id)
        if product is not None
        else None,
    )


def errors(raw: list[MetaError]) -> list[MetaErrorDetail]:
    return [
        MetaErrorDetail(
            code=e.code,
            title=e.title,
            message=e.message,
            details=e.error_data.details if e.error_data is not None else None,
            href=e.href,
        )
        for e in raw
    ]
