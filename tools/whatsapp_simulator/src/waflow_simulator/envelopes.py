"""Webhook bodies in Meta's exact shape: inbound messages, statuses, and reading messages back out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from waflow_simulator.models import CustomerMessage, Number

# Real user messages open or refresh the 24 h window; reactions, system and unsupported ones do not
# (REFERENCE.md §10).
# Any message the customer sends opens Meta's window, one of a type Meta calls unsupported (a poll) too; Meta's own
# notices and what acts on an earlier message do not.
NOT_WINDOW_TYPES = frozenset({"system", "reaction", "edit", "revoke"})
_UNSUPPORTED_ERRORS: list[dict[str, Any]] = [
    {
        "code": 131051,
        "title": "Message type unknown",
        "message": "Message type unknown",
        "error_data": {"details": "Message type is currently not supported."},
    }
]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A customer message ready for an envelope; `name` is None for senders Meta lists no contact for."""

    number: Number
    wa_id: str
    name: str | None
    message: dict[str, Any]


def message_object(message: CustomerMessage, wamid: str, timestamp: int) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "from": message.from_,
        "id": wamid,
        "timestamp": str(timestamp),
        "type": message.type,
        message.type: message.content,
    }
    if message.context is not None:
        obj["context"] = message.context
    if message.referral is not None:
        obj["referral"] = message.referral
    if message.errors is not None:
        obj["errors"] = message.errors
    elif message.type == "unsupported":
        obj["errors"] = _UNSUPPORTED_ERRORS
    return obj


def inbound(number: Number, message: CustomerMessage, wamid: str, timestamp: int) -> Inbound:
    name = None if message.type == "system" else message.name
    return Inbound(number, message.from_, name, message_object(message, wamid, timestamp))


def _metadata(number: Number) -> dict[str, str]:
    return {"display_phone_number": number.display_phone_number, "phone_number_id": number.phone_number_id}


def customer_envelope(items: Sequence[Inbound]) -> dict[str, Any]:
    """One POST body: an entry per WABA, a change per business number, messages in the given order."""
    by_waba: dict[str, dict[str, tuple[Number, dict[str, dict[str, Any]], list[dict[str, Any]]]]] = {}
    for item in items:
        values = by_waba.setdefault(item.number.waba_id, {})
        number_id = item.number.phone_number_id
        if number_id not in values:
            values[number_id] = (item.number, {}, [])
        _, contacts, messages = values[number_id]
        if item.name is not None and item.wa_id not in contacts:
            contacts[item.wa_id] = {"profile": {"name": item.name}, "wa_id": item.wa_id}
        messages.append(item.message)
    entries = []
    for waba_id, values in by_waba.items():
        changes = []
        for number, contacts, messages in values.values():
            value: dict[str, Any] = {"messaging_product": "whatsapp", "metadata": _metadata(number)}
            if contacts:
                value["contacts"] = list(contacts.values())
            value["messages"] = messages
            changes.append({"value": value, "field": "messages"})
        entries.append({"id": waba_id, "changes": changes})
    return {"object": "whatsapp_business_account", "entry": entries}


def status_envelope(number: Number, status: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "metadata": _metadata(number), "statuses": [status]}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": number.waba_id, "changes": [{"value": value, "field": "messages"}]}],
    }


def _dicts(value: Any, key: str) -> Iterator[dict[str, Any]]:
    items = value.get(key) if isinstance(value, dict) else None
    if isinstance(items, list):
        yield from (item for item in items if isinstance(item, dict))


def window_openers(envelope: Any) -> Iterator[tuple[str, str, int]]:
    """(phone_number_id, wa_id, timestamp) of each real user message in any webhook body, however odd."""
    for entry in _dicts(envelope, "entry"):
        for change in _dicts(entry, "changes"):
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if not isinstance(number_id, str):
                continue
            for message in _dicts(value, "messages"):
                sender, stamp = message.get("from"), message.get("timestamp")
                if message.get("type") not in NOT_WINDOW_TYPES and isinstance(sender, str) and str(stamp).isdigit():
                    yield number_id, sender, int(str(stamp))


def ids_in(envelope: dict[str, Any]) -> list[str]:
    """Message and status ids a body carries, for the delivery log."""
    found: list[str] = []
    for entry in _dicts(envelope, "entry"):
        for change in _dicts(entry, "changes"):
            value = change.get("value")
            for key in ("messages", "statuses"):
                found.extend(str(item.get("id")) for item in _dicts(value, key) if "id" in item)
    return found
