"""Pure rules of ingest: who may deliver for which tenant, and turning Meta's webhook body into typed waflow
events.

What happens to an authentic (correctly signed) delivery, by what it holds:
- not JSON: `InvalidWebhook`, answered 400 and not archived (see api.BadWebhook for why);
- JSON, but not Meta's shape in whole or in part: every part that can be read becomes its event, every part that
  cannot is an `ItemFailure` (dead-lettered on wa.inbound.v1.dlq with the reason), and the delivery answers 200;
- an entry for a number (or WABA) no tenant owns is `unrouted`, one owned by a tenant of another Meta app is
  `foreign`: both are only archived and counted, never routed and never dead-lettered under a tenant.
"""

from __future__ import annotations

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
    MessageReceived,
    MessageReceivedEvent,
    MessageStatus,
    MessageStatusEvent,
    Pricing,
    Referral,
    TemplateStatus,
    TemplateStatusEvent,
)

from waflow_ingest import message_content
from waflow_ingest.senders import Senders
from waflow_ingest.webhook_models import (
    MAX_DEPTH,
    MAX_ITEM_BYTES,
    Change,
    Entry,
    InboundMessage,
    InboundStatus,
    MessagesValue,
    Metadata,
    TypedMessagesValue,
    TypedWebhook,
    WebhookBody,
    nesting_within,
)

TEMPLATE_FIELDS = frozenset(
    {"message_template_status_update", "message_template_quality_update", "template_category_update"}
)
# What ingest catches from reading one item: pydantic's errors, and the plain ones a wrongly shaped object raises.
READ_ERRORS = (ValidationError, ValueError, KeyError, TypeError, AttributeError)


class InvalidWebhook(ValueError):
    """The body is not JSON at all (answered 400)."""


@dataclass(frozen=True)
class NumberOwner:
    """The tenant a number or WABA is registered to, and the Meta app that tenant is registered under."""

    tenant_id: str
    app_id: str


# Looks a phone_number_id (or a WABA id, for fields without metadata) up in the registry.
OwnerLookup = Callable[[str], NumberOwner | None]


@dataclass(frozen=True)
class ItemFailure:
    """A part of a delivery that could not be read: dead-lettered alone, the rest of the batch goes on.

    `item` is the part as parsed; `whole_body` marks a body that is JSON but not a webhook at all (the dead letter
    then carries the body exactly as received)."""

    tenant_id: str | None
    reason: str
    item: Any
    whole_body: bool = False


@dataclass
class Normalised:
    events: list[Envelope[Any]] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    phone_number_ids: list[str] = field(default_factory=list)
    tenant_ids: list[str] = field(default_factory=list)
    unrouted_phone_number_ids: list[str] = field(default_factory=list)
    unrouted_entries: int = 0
    foreign_phone_number_ids: list[str] = field(default_factory=list)
    foreign_entries: int = 0

    def fail(self, tenant_id: str | None, where: str, exc: Exception, item: Any) -> None:
        self.failures.append(ItemFailure(tenant_id, f"{where}: {_describe(exc)}", item))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in exc.errors()[:5]]
        more = exc.error_count() - len(parts)
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return str(exc)[:1000]


def parse_body(body: bytes) -> Any:
    """The JSON value of the body, whatever it is; only bytes that are not JSON are refused."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidWebhook(f"body is not JSON: {exc}") from exc


def normalise(
    body: Any,
    *,
    app_id: str,
    owner_of_number: OwnerLookup,
    owner_of_waba: OwnerLookup,
    correlation_id: str,
    causation_id: Any = None,
    now: datetime,
) -> Normalised:
    """Every entry, every change, every message and status of a delivery signed by `app_id`, each its own event."""
    out = Normalised()
    batch = _Batch(out, app_id, owner_of_number, owner_of_waba, correlation_id, causation_id, now)
    try:
        typed = TypedWebhook.model_validate(body)
    except ValidationError:
        pass  # read layer by layer below, to find the parts that are wrong
    else:
        for raw, typed_entry in zip(body["entry"], typed.entry, strict=True):
            for raw_change, typed_change in zip(raw.get("changes", ()), typed_entry.changes, strict=True):
                batch.messages_change(typed_entry.id, raw_change["value"], typed_change.value)
        return out
    try:
        webhook = WebhookBody.model_validate(body)
    except ValidationError as exc:
        out.failures.append(ItemFailure(None, f"body is not a WhatsApp webhook: {_describe(exc)}", None, True))
        return out
    for raw_entry in webhook.entry:
        try:
            entry = Entry.model_validate(raw_entry)
        except ValidationError as exc:
            out.fail(None, "entry", exc, raw_entry)
            continue
        for raw_change in entry.changes:
            try:
                change = Change.model_validate(raw_change)
            except ValidationError as exc:
                out.fail(None, "change", exc, raw_change)
                continue
            if change.field == "messages":
                batch.messages_change(entry.id, change.value, None)
            else:
                batch.other_change(entry, change, str(raw_entry.get("time", "")))
    return out


def _checked_item(raw: Any) -> dict[str, Any]:
    """An item that is an object, nests within MAX_DEPTH and serialises within MAX_ITEM_BYTES."""
    if not isinstance(raw, dict):
        raise TypeError(f"an object is expected, not {type(raw).__name__}")
    if not nesting_within(raw):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    size = len(orjson.dumps(raw))
    if size > MAX_ITEM_BYTES:
        raise ValueError(f"{size} bytes, more than the {MAX_ITEM_BYTES} an item may hold")
    return raw


@dataclass
class _Batch:
    out: Normalised
    app_id: str
    owner_of_number: OwnerLookup
    owner_of_waba: OwnerLookup
    correlation_id: str
    causation_id: Any
    now: datetime

    def _common(self) -> dict[str, Any]:
        return {"correlation_id": self.correlation_id, "causation_id": self.causation_id, "clock": lambda: self.now}

    def _route(self, owner: NumberOwner | None, label: str) -> str | None:
        """The tenant to route to, or None: unknown numbers and numbers of another app's tenants are only counted.

        The signature proves only which app sent the delivery; whoever holds one app's secret must not reach the
        tenants of another, so a number registered under another app is `foreign`, never routed."""
        out = self.out
        if label and label not in out.phone_number_ids:
            out.phone_number_ids.append(label)
        if owner is None:
            out.unrouted_entries += 1
            if label not in out.unrouted_phone_number_ids:
                out.unrouted_phone_number_ids.append(label)
            return None
        if owner.app_id != self.app_id:
            out.foreign_entries += 1
            if label not in out.foreign_phone_number_ids:
                out.foreign_phone_number_ids.append(label)
            return None
        if owner.tenant_id not in out.tenant_ids:
            out.tenant_ids.append(owner.tenant_id)
        return owner.tenant_id

    def messages_change(self, waba_id: str, raw_value: dict[str, Any], typed: TypedMessagesValue | None) -> None:
        """One `messages` change; `typed` when the whole body was read in one validation, else None."""
        out = self.out
        if typed is None:
            try:
                metadata = Metadata.model_validate(raw_value.get("metadata"))
            except ValidationError as exc:
                out.fail(None, "value.metadata", exc, raw_value)
                return
        else:
            metadata = typed.metadata
        number = metadata.phone_number_id
        tenant_id = self._route(self.owner_of_number(number), number)
        if tenant_id is None:
            return  # kept in the raw archive (whatsapp.webhooks.v1) and counted; never routed to a guess
        if typed is None:
            try:
                value = MessagesValue.model_validate(raw_value)
            except ValidationError as exc:
                out.fail(tenant_id, "value", exc, raw_value)
                return
            contacts, messages, statuses, errors = value.contacts, value.messages, value.statuses, value.errors
            read_messages: list[InboundMessage | None] = [None] * len(messages)
            read_statuses: list[InboundStatus | None] = [None] * len(statuses)
        else:
            contacts, errors = list(typed.contacts), typed.errors
            messages, statuses = raw_value.get("messages", []), raw_value.get("statuses", [])
            read_messages, read_statuses = list(typed.messages), list(typed.statuses)
        senders = Senders(out, tenant_id, contacts)
        for raw, read in zip(messages, read_messages, strict=True):
            try:
                received = self._message(_checked_item(raw), read, waba_id, metadata, senders)
                out.events.append(
                    MessageReceivedEvent.new(
                        tenant_id=tenant_id,
                        payload=received,
                        occurred_at=received.timestamp,
                        event_id=derived_event_id(tenant_id, received.wamid),
                        **self._common(),
                    )
                )
            except READ_ERRORS as exc:
                out.fail(tenant_id, "message", exc, raw)
        for raw, read_status in zip(statuses, read_statuses, strict=True):
            try:
                status = self._status(_checked_item(raw), read_status, waba_id, number)
                out.events.append(
                    MessageStatusEvent.new(
                        tenant_id=tenant_id,
                        payload=status,
                        occurred_at=status.timestamp,
                        event_id=derived_event_id(tenant_id, status.wamid, status.status, str(raw["timestamp"])),
                        **self._common(),
                    )
                )
            except READ_ERRORS as exc:
                out.fail(tenant_id, "status", exc, raw)
        if errors and not messages and not statuses:
            # System, app or account problems (e.g. 130429, 131000) arrive as value-level errors with nothing else.
            try:
                _checked_item(raw_value)
                identity = orjson.dumps(errors, option=orjson.OPT_SORT_KEYS).decode()
                payload = AccountUpdate(
                    waba_id=waba_id, field="messages", event="ERRORS", phone_number_id=number, value=raw_value
                )
            except READ_ERRORS as exc:
                out.fail(tenant_id, "value.errors", exc, raw_value)
                return
            out.events.append(
                AccountUpdateEvent.new(
                    tenant_id=tenant_id,
                    payload=payload,
                    event_id=derived_event_id(tenant_id, "errors", number, identity),
                    **self._common(),
                )
            )

    def _message(
        self, raw: dict[str, Any], read: InboundMessage | None, waba_id: str, metadata: Metadata, senders: Senders
    ) -> MessageReceived:
        m = read if read is not None else InboundMessage.model_validate(raw)
        contact = senders.of(m.from_, m.from_user_id)
        profile = contact.profile if contact is not None else None
        return MessageReceived(
            wamid=m.id,
            phone_number_id=metadata.phone_number_id,
            display_phone_number=metadata.display_phone_number,
            waba_id=waba_id,
            wa_id=m.from_,
            user_id=m.from_user_id or (contact.user_id if contact is not None else None),
            username=profile.username if profile is not None else None,
            profile_name=profile.name if profile is not None else None,
            type=m.type,
            timestamp=m.timestamp,
            content=message_content.content(m.type, raw),
            context=message_content.context(m.context) if m.context is not None else None,
            referral=Referral.model_validate(m.referral) if m.referral is not None else None,
            errors=message_content.errors(m.errors),
        )

    def _status(
        self, raw: dict[str, Any], read: InboundStatus | None, waba_id: str, phone_number_id: str
    ) -> MessageStatus:
        s = read if read is not None else InboundStatus.model_validate(raw)
        return MessageStatus(
            wamid=s.id,
            phone_number_id=phone_number_id,
            waba_id=waba_id,
            wa_id=s.recipient_id,
            user_id=s.recipient_user_id,
            status=s.status,
            timestamp=s.timestamp,
            conversation=s.conversation,
            pricing=Pricing.model_validate(s.pricing) if s.pricing is not None else None,
            errors=message_content.errors(s.errors),
            biz_opaque_callback_data=s.biz_opaque_callback_data,
        )

    def other_change(self, entry: Entry, change: Change, raw_time: str) -> None:
        """Template and account updates: fields without metadata, routed by the entry's WABA."""
        out, value, field_name = self.out, change.value, change.field
        number = _phone_number_id(value)
        tenant_id = self._route(self.owner_of_waba(entry.id), number or f"waba:{entry.id}")
        if tenant_id is None:
            return
        occurred = entry.time or self.now
        try:
            _checked_item(value)
            identity = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
            event_id = derived_event_id(tenant_id, field_name, raw_time, identity)
            if field_name in TEMPLATE_FIELDS:
                out.events.append(
                    TemplateStatusEvent.new(
                        tenant_id=tenant_id,
                        payload=_template_status(entry.id, field_name, value),
                        occurred_at=occurred,
                        event_id=event_id,
                        **self._common(),
                    )
                )
            else:
                event = value.get("event")
                out.events.append(
                    AccountUpdateEvent.new(
                        tenant_id=tenant_id,
                        payload=AccountUpdate(
                            waba_id=entry.id,
                            field=field_name,
                            event=str(event) if isinstance(event, str | int) and not isinstance(event, bool) else None,
                            phone_number_id=number,
                            value=value,
                        ),
                        occurred_at=occurred,
                        event_id=event_id,
                        **self._common(),
                    )
                )
        except READ_ERRORS as exc:
            out.fail(tenant_id, field_name, exc, value)


def _phone_number_id(value: dict[str, Any]) -> str | None:
    """The number a non-`messages` update is about, when it names one (as digits)."""
    metadata = value.get("metadata")
    found = value.get("phone_number_id") or (metadata.get("phone_number_id") if isinstance(metadata, dict) else None)
    return found if isinstance(found, str) and found.isascii() and found.isdigit() and len(found) <= 32 else None


def _template_status(waba_id: str, field_name: str, value: dict[str, Any]) -> TemplateStatus:
    known = {"event", "message_template_id", "message_template_name", "message_template_language", "reason"}
    known |= {"message_template_category"}
    event = value.get("event")
    if event is None:
        event = "QUALITY_CHANGED" if field_name == "message_template_quality_update" else "CATEGORY_CHANGED"
    template_id = value.get("message_template_id")
    if template_id is not None and (isinstance(template_id, bool) or not isinstance(template_id, int | str)):
        raise TypeError("message_template_id is neither a number nor a string")
    return TemplateStatus(
        waba_id=waba_id,
        field=field_name,
        event=event,
        template_id=str(template_id) if template_id is not None else None,
        name=value.get("message_template_name"),
        language=value.get("message_template_language"),
        reason=value.get("reason"),
        category=value.get("message_template_category") or value.get("new_category"),
        detail={k: v for k, v in value.items() if k not in known},
    )
