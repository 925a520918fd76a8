"""Pure rules of a conversation: delivery status ordering, the 24-hour window, ids, previews, phone numbers.

The rules for a customer's edits and deletions of their own messages are in domain_amendments.py.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from waflow_common import customers
from waflow_common.customers import PhoneNumber
from waflow_common.events.envelope import derived_event_id

WINDOW = timedelta(hours=24)

# --- errors a client can cause -------------------------------------------------------------------------------


class ConversationError(Exception):
    """A domain refusal; the API maps each subclass to one status code and error code."""

    code = "conversation_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WindowClosed(ConversationError):
    code = "window_closed"


class ContactBlacklisted(ConversationError):
    code = "blacklisted"


class InvalidPhoneNumber(ConversationError):
    code = "invalid_phone"


class InvalidCursor(ConversationError):
    code = "invalid_cursor"


class InvalidQuery(ConversationError):
    code = "invalid_request"


class IdempotencyKeyReused(ConversationError):
    code = "idempotency_key_reused"


# --- ids -----------------------------------------------------------------------------------------------------


def chat_id_for(tenant_id: str, phone_number_id: str, customer: str) -> str:
    """One chat per (business number, customer): the same id in every process, so creation is an upsert.

    `customer` is the key CustomerLinks gives the customer (the wa_id of one who first wrote by phone, else the
    BSUID), so a customer keeps their chat when a second id of theirs appears."""
    return "ch_" + derived_event_id("chat", tenant_id, phone_number_id, customer).hex[:24]


def inbound_message_id(tenant_id: str, wamid: str) -> str:
    return "msg_" + derived_event_id("message", tenant_id, wamid).hex[:24]


def outbound_message_id(tenant_id: str, request_id: str) -> str:
    return "msg_" + derived_event_id("outbound", tenant_id, request_id).hex[:24]


def request_id_for(tenant_id: str, chat_id: str, idempotency_key: str) -> str:
    """A retried POST with the same Idempotency-Key makes the same request id, hence the same message."""
    return "req_" + derived_event_id("request", tenant_id, chat_id, idempotency_key).hex[:24]


def pending_wamid(message_id: str) -> str:
    """Placeholder until Meta gives a wamid: the (tenant_id, wamid) unique index needs a distinct value."""
    return f"pending:{message_id}"


# --- delivery status -----------------------------------------------------------------------------------------

# sent < delivered < read < played (REFERENCE §6); pending/accepted are ours, before Meta reports anything.
STATUS_RANK = {"pending": 0, "accepted": 1, "sent": 2, "delivered": 3, "read": 4, "played": 5}
META_STATUSES = frozenset({"sent", "delivered", "read", "played", "failed"})
POSITIVE_AFTER_FAILURE = frozenset({"delivered", "read", "played"})


@dataclass(frozen=True)
class StatusReport:
    """One status Meta reported for a wamid."""

    status: str
    at: datetime


@dataclass(frozen=True)
class DeliveryState:
    status: str
    at: datetime | None


def delivery_state(lifecycle: DeliveryState, reports: Iterable[StatusReport]) -> DeliveryState:
    """The visible status given our own lifecycle (pending/accepted/failed) and every status Meta reported.

    A function of the *set* of reports, so duplicates and any arrival order end in the same state:
    the furthest of sent < delivered < read < played, unless Meta reported `failed` and no delivered/read/played
    carries a later timestamp (a later positive report beats an earlier failure: multi-device, REFERENCE §6).
    Unknown statuses are kept in the history by the caller and change nothing here.
    """
    known = [r for r in set(reports) if r.status in META_STATUSES]
    failures = [r for r in known if r.status == "failed"]
    positives = [r for r in known if r.status != "failed"]
    if failures:
        last_failure = max(failures, key=lambda r: r.at)
        later = [r for r in positives if r.status in POSITIVE_AFTER_FAILURE and r.at > last_failure.at]
        if not later:
            return DeliveryState("failed", last_failure.at)
        positives = later
    if positives:
        best = max(positives, key=lambda r: (STATUS_RANK[r.status], r.at))
        if STATUS_RANK[best.status] >= STATUS_RANK.get(lifecycle.status, 0) or lifecycle.status == "failed":
            return DeliveryState(best.status, best.at)
    return lifecycle


def lifecycle_after_acceptance(current: str) -> str:
    """send.accepted moves pending to accepted; anything further along stays."""
    return "accepted" if current == "pending" else current


# --- the 24-hour window --------------------------------------------------------------------------------------


def millis(at: datetime) -> datetime:
    """MongoDB keeps milliseconds: values compared with stored ones are cut the same way first."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def window_expiry(message_at: datetime) -> datetime:
    return message_at + WINDOW


def window_open(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and now < expires_at


def refreshed_expiry(current: datetime | None, message_at: datetime) -> datetime:
    """The window only ever moves later: an older message arriving late does not shorten it."""
    candidate = window_expiry(message_at)
    return candidate if current is None or candidate > current else current


def window_phase(expires_at: datetime | None, now: datetime, lead: timedelta) -> str:
    """closed, closing (inside the lead time before expiry) or open."""
    if not window_open(expires_at, now):
        return "closed"
    assert expires_at is not None
    return "closing" if expires_at - lead <= now else "open"


# --- unread ----------------------------------------------------------------------------------------------------

# What the customer did that an agent must look at; reactions, edits, revokes and system notices are not
# new messages (a reaction shows on its message instead).
NOT_UNREAD = frozenset({"reaction", "edit", "revoke", "system"})


def counts_as_unread(content_type: str) -> bool:
    return content_type not in NOT_UNREAD


# Reactions ride on the message they react to; edits and revokes change the message they name.
NOT_OWN_ENTRY = frozenset({"reaction", "edit", "revoke"})


def shown_as_own_entry(content_type: str) -> bool:
    """Whether a message of this type is an item of the timeline (and the chat's preview) on its own."""
    return content_type not in NOT_OWN_ENTRY


# --- previews ----------------------------------------------------------------------------------------------------

PREVIEW_LENGTH = 120
# What WhatsApp itself shows, in the chat and in the chat list, where the sender deleted a message. A chat whose
# last message the customer deleted previews this rather than the message before: the agent learns that the
# customer's last act was to take something back (as on their own phone), and an older line, perhaps the agent's
# own reply, would suggest the customer never answered. ("Delete for me" is different: the agent chose not to see
# the message any more, so the chat shows the newest message still shown.)
REVOKED_PREVIEW = "This message was deleted"


def preview(content: dict[str, Any]) -> str:
    """The line a chat list shows for a message."""
    kind = content.get("type", "")
    text: str | None
    match kind:
        case "text":
            text = content.get("body")
        case "image" | "video" | "audio" | "document" | "sticker":
            label = {"audio": "Voice message" if content.get("voice") else "Audio"}.get(kind, kind.capitalize())
            text = content.get("caption") or content.get("filename") or f"[{label}]"
        case "location":
            text = content.get("name") or "[Location]"
        case "contacts":
            text = "[Contact card]"
        case "interactive":
            text = content.get("title") or content.get("flow_name") or "[Interactive reply]"
        case "button":
            text = content.get("text")
        case "reaction":
            text = f"Reacted {content.get('emoji') or ''}".strip()
        case "order":
            text = "[Order]"
        case "template":
            text = f"[Template {content.get('name')}]"
        case _:
            text = f"[{content.get('original_type') or kind}]"
    text = text or f"[{kind}]"
    return text if len(text) <= PREVIEW_LENGTH else text[: PREVIEW_LENGTH - 1] + "…"


def message_preview(message: dict[str, Any]) -> str:
    """The line a chat list shows for a stored message: its current content, or that the customer deleted it."""
    return REVOKED_PREVIEW if message.get("revoked_at") is not None else preview(message["content"])


def last_message_view(message: dict[str, Any]) -> dict[str, Any]:
    """What a chat shows of its last message (the chat document's `last_message`)."""
    wamid = str(message["wamid"])
    return {
        "message_id": message["message_id"],
        "wamid": None if wamid.startswith("pending:") else wamid,
        "direction": message["direction"],
        "type": message["type"],
        "preview": message_preview(message),
        "at": message["at"],
    }


# --- phone numbers ----------------------------------------------------------------------------------------------


def normalise_phone(raw: str) -> PhoneNumber:
    """A number as typed → E.164 and every wa_id form it can have: the rule every service uses
    (waflow_common.customers), so another form of a known number finds the same customer."""
    try:
        return customers.normalise_phone(raw)
    except customers.InvalidPhoneNumber as exc:
        raise InvalidPhoneNumber(f"{exc.reason}: give the number in international form, e.g. +34612345678") from exc


# --- cursors ----------------------------------------------------------------------------------------------------


def encode_cursor(at: datetime, item_id: str) -> str:
    raw = json.dumps([at.isoformat(), item_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, item_id = json.loads(raw)
        when = datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor("the cursor is not one this API returned") from exc
    if when.tzinfo is None or not isinstance(item_id, str):
        raise InvalidCursor("the cursor is not one this API returned")
    return when, item_id
