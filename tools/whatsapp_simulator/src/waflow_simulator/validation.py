"""Validation of `POST /{phone_number_id}/messages` bodies the way the Cloud API reports problems."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from waflow_simulator.errors import GraphError, meta_error

MESSAGE_TYPES = (
    "audio",
    "contacts",
    "document",
    "image",
    "interactive",
    "location",
    "reaction",
    "sticker",
    "template",
    "text",
    "video",
)
_INTERACTIVE_TYPES = frozenset(
    {
        "button",
        "list",
        "cta_url",
        "flow",
        "product",
        "product_list",
        "catalog_message",
        "location_request_message",
        "address_message",
        "call_permission_request",
        "voice_call",
    }
)
_TO = re.compile(r"^\+?\d{5,20}$")
# A business-scoped user id: ISO country code, a period, up to 128 alphanumerics (e.g. US.13491208655302741918).
_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9]{1,128}$")
_MAX_TEXT = 4096
_MAX_BODY = 1024
_MAX_CAPTION = 1024


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A valid call: `type` is "read" for mark-as-read, `wa_id` is `to` without the plus.

    Sent to a business-scoped user id (Meta's `recipient`, used when there is no `to`), `to` and `wa_id` are that
    id and `user_id` says so: the simulator keeps a BSUID-only customer under their BSUID."""

    body: dict[str, Any]
    type: str
    to: str
    wa_id: str
    user_id: str | None = None


def _missing(path: str) -> GraphError:
    return meta_error(131008, f"The parameter {path} is required.")


def _invalid(details: str) -> GraphError:
    return meta_error(100, details)


def _value(details: str) -> GraphError:
    return meta_error(131009, details)


def _one_of(param: str, allowed: Any, got: Any) -> GraphError:
    choices = ", ".join(sorted(str(a).upper() for a in allowed))
    return _invalid(f'Param {param} must be one of {{{choices}}} - got "{got}".')


def _field(obj: dict[str, Any], key: str, path: str, *, max_len: int | None = None) -> str:
    value = obj.get(key)
    if value is None:
        raise _missing(f"{path}['{key}']")
    if not isinstance(value, str):
        raise _invalid(f"Param {path}['{key}'] must be a string.")
    if max_len is not None and len(value) > max_len:
        raise _invalid(f"Param {path}['{key}'] must be at most {max_len} characters long.")
    return value


def _dict(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise _missing(f"{path}['{key}']")
    if not isinstance(value, dict):
        raise _invalid(f"Param {path}['{key}'] must be a JSON object.")
    return value


def _text(obj: dict[str, Any]) -> None:
    _field(obj, "body", "text", max_len=_MAX_TEXT)
    if not isinstance(obj.get("preview_url", False), bool):
        raise _invalid("Param text['preview_url'] must be a boolean.")


def _media(kind: str) -> Callable[[dict[str, Any]], None]:
    def check(obj: dict[str, Any]) -> None:
        has_id, has_link = obj.get("id") is not None, obj.get("link") is not None
        if not has_id and not has_link:
            raise _missing(f"{kind}['id'] or {kind}['link']")
        if has_id and has_link:
            raise _invalid(f"Param {kind} must have either 'id' or 'link', not both.")
        if has_link and not str(obj["link"]).startswith(("http://", "https://")):
            raise _value(f"Param {kind}['link'] must be a valid http(s) URL.")
        if "caption" in obj:
            _field(obj, "caption", kind, max_len=_MAX_CAPTION)

    return check


def _location(obj: dict[str, Any]) -> None:
    for key in ("latitude", "longitude"):
        value = obj.get(key)
        if value is None:
            raise _missing(f"location['{key}']")
        try:
            float(value)
        except (TypeError, ValueError):
            raise _invalid(f"Param location['{key}'] must be a number.") from None


def _contacts(cards: list[Any]) -> None:
    if not cards:
        raise _missing("contacts[0]")
    for index, card in enumerate(cards):
        if not isinstance(card, dict):
            raise _invalid(f"Param contacts[{index}] must be a JSON object.")
        _field(_dict(card, "name", f"contacts[{index}]"), "formatted_name", f"contacts[{index}]['name']")


def _reaction(obj: dict[str, Any]) -> None:
    _field(obj, "message_id", "reaction")
    # An empty emoji is how a reaction is removed, so only its absence is an error.
    _field(obj, "emoji", "reaction")


def _reply_buttons(action: dict[str, Any]) -> None:
    buttons = action.get("buttons")
    if buttons is None:
        raise _missing("interactive['action']['buttons']")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise _value("The number of reply buttons must be between 1 and 3.")
    ids: set[str] = set()
    for index, button in enumerate(buttons):
        path = f"interactive['action']['buttons'][{index}]"
        if not isinstance(button, dict):
            raise _invalid(f"Param {path} must be a JSON object.")
        if button.get("type") != "reply":
            raise _one_of(f"{path}['type']", ["reply"], button.get("type"))
        reply = _dict(button, "reply", path)
        button_id = _field(reply, "id", f"{path}['reply']", max_len=256)
        _field(reply, "title", f"{path}['reply']", max_len=20)
        if button_id in ids:
            raise _value(f"Duplicate button id {button_id!r}: reply button ids must be unique.")
        ids.add(button_id)


def _list_sections(action: dict[str, Any]) -> None:
    _field(action, "button", "interactive['action']", max_len=20)
    sections = action.get("sections")
    if sections is None:
        raise _missing("interactive['action']['sections']")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        raise _value("The number of list sections must be between 1 and 10.")
    rows = 0
    for s_index, section in enumerate(sections):
        path = f"interactive['action']['sections'][{s_index}]"
        if not isinstance(section, dict) or not isinstance(section.get("rows"), list):
            raise _missing(f"{path}['rows']")
        for r_index, row in enumerate(section["rows"]):
            row_path = f"{path}['rows'][{r_index}]"
            if not isinstance(row, dict):
                raise _invalid(f"Param {row_path} must be a JSON object.")
            _field(row, "id", row_path, max_len=200)
            _field(row, "title", row_path, max_len=24)
            if "description" in row:
                _field(row, "description", row_path, max_len=72)
            rows += 1
    if not 1 <= rows <= 10:
        raise _value("The total number of list rows must be between 1 and 10.")


def _interactive(obj: dict[str, Any]) -> None:
    kind = obj.get("type")
    if kind is None:
        raise _missing("interactive['type']")
    if kind not in _INTERACTIVE_TYPES:
        raise _one_of("interactive['type']", _INTERACTIVE_TYPES, kind)
    if kind in ("button", "list", "cta_url", "flow", "product_list", "catalog_message"):
        _field(_dict(obj, "body", "interactive"), "text", "interactive['body']", max_len=_MAX_BODY)
    action = _dict(obj, "action", "interactive")
    if kind == "button":
        _reply_buttons(action)
    elif kind == "list":
        _list_sections(action)


def _template(obj: dict[str, Any]) -> None:
    _field(obj, "name", "template")
    _field(_dict(obj, "language", "template"), "code", "template['language']")


_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "text": _text,
    "image": _media("image"),
    "video": _media("video"),
    "audio": _media("audio"),
    "document": _media("document"),
    "sticker": _media("sticker"),
    "location": _location,
    "reaction": _reaction,
    "interactive": _interactive,
    "template": _template,
}


def _read(payload: dict[str, Any]) -> SendRequest:
    if payload["status"] != "read":
        raise _one_of("status", ["read"], payload["status"])
    message_id = payload.get("message_id")
    if message_id is None:
        raise _missing("message_id")
    if not isinstance(message_id, str) or not message_id.startswith("wamid."):
        raise _value(f"Invalid message_id {message_id!r}: not a WhatsApp message id.")
    typing = payload.get("typing_indicator")
    if typing is not None and (not isinstance(typing, dict) or typing.get("type") != "text"):
        raise _one_of("typing_indicator['type']", ["text"], typing.get("type") if isinstance(typing, dict) else typing)
    return SendRequest(payload, "read", "", "")


def parse(payload: Any) -> SendRequest:
    if not isinstance(payload, dict):
        raise _invalid("The request body must be a JSON object.")
    product = payload.get("messaging_product")
    if product is None:
        raise _invalid("The parameter messaging_product is required.")
    if product != "whatsapp":
        raise _one_of("messaging_product", ["whatsapp"], product)
    if payload.get("status") is not None:
        return _read(payload)
    recipient_type = payload.get("recipient_type", "individual")
    if recipient_type not in ("individual", "group"):
        raise _one_of("recipient_type", ["individual", "group"], recipient_type)
    to = payload.get("to")
    user_id = None
    if to is None and payload.get("recipient") is not None:
        user_id = payload["recipient"]
        if not isinstance(user_id, str) or not _BSUID.fullmatch(user_id):
            raise _value(f"Param recipient must be a business-scoped user id - got {user_id!r}.")
        to = user_id
    elif to is None:
        raise _missing("to")
    elif not isinstance(to, str) or not _TO.fullmatch(to):
        raise _value(f"Param to must be a phone number or WhatsApp id (digits, optional +) - got {to!r}.")
    # Meta treats a missing type as text.
    kind = payload.get("type", "text")
    if kind not in MESSAGE_TYPES:
        raise _one_of("type", MESSAGE_TYPES, kind)
    obj = payload.get(kind)
    if obj is None:
        raise _missing(kind)
    if kind == "contacts":
        if not isinstance(obj, list):
            raise _invalid("Param contacts must be an array.")
        _contacts(obj)
    elif not isinstance(obj, dict):
        raise _invalid(f"Param {kind} must be a JSON object.")
    else:
        _CHECKS[kind](obj)
    context = payload.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise _invalid("Param context must be a JSON object.")
        _field(context, "message_id", "context")
    return SendRequest(payload, kind, to, to.removeprefix("+"), user_id)
