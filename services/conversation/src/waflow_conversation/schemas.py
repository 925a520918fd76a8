"""The REST API's request and response models, with the examples the OpenAPI document shows."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from waflow_common.customers import e164_of

from waflow_conversation import domain
from waflow_conversation.repository import Document

WAMID = "wamid.HBgLMTU1NTc2NTQzMjEVAgASGBQzRUIwQzc2QjFBNDRFNDQzNTJGMQA="
AT = "2026-01-01T10:32:05Z"

# "Not blank" is said with ASCII whitespace only: regex engines (the schema's readers, pydantic's) disagree on
# which other characters are whitespace, and the schema must mean exactly what the server enforces.
ASCII_SPACE = " \t\n\r\f\v"
NOT_BLANK = r"[^ \t\n\r\f\v]"


def _strip(value: str) -> str:
    return value.strip(ASCII_SPACE)


# Required texts: at least one character that is not whitespace, bounded, stored stripped.
Agent = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK), AfterValidator(_strip)]
NoteText = Annotated[str, StringConstraints(min_length=1, max_length=10_000, pattern=NOT_BLANK), AfterValidator(_strip)]
PHONE_PATTERN = r"^[0-9 +().\-]+$"
RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: Any) -> Any:
    # The schema says format date-time (RFC 3339: with seconds and an offset); pydantic alone would also take
    # "0.5" as a Unix time or a date without an offset.
    if isinstance(value, str) and not RFC3339.match(value):
        raise ValueError("an RFC 3339 date-time with an offset is expected, e.g. 2026-01-01T10:00:00Z")
    return value


Instant = Annotated[datetime, BeforeValidator(_rfc3339)]
ID = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Strict(BaseModel):
    """A request body: unknown fields refused. Its booleans are StrictBool: `0` or `"yes"` is no boolean."""

    model_config = ConfigDict(extra="forbid")


# --- chats ---------------------------------------------------------------------------------------------------


class ContactListOut(BaseModel):
    list_id: str
    name: str


class ContactOut(BaseModel):
    contact_id: str
    name: str | None
    profile_name: str | None
    phone_e164: str | None
    tags: list[str]
    lists: list[ContactListOut]
    fields: dict[str, Any]
    deleted: bool
    blacklisted: bool


class LastMessageOut(BaseModel):
    message_id: str
    wamid: str | None
    direction: Literal["in", "out"]
    type: str
    preview: str
    at: datetime


class WindowOut(BaseModel):
    open: bool = Field(description="free-form messages are allowed now")
    opened_at: datetime | None
    expires_at: datetime | None


class ChatOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "chat_id": "ch_5f1c0e6e0d7a4c2b9e1f3a7d",
                    "phone_number_id": "118273645501928",
                    "wa_id": "15557654321",
                    "phone_e164": "+15557654321",
                    "display_name": "Giulia Rossi",
                    "contact": {
                        "contact_id": "ct_15557654321",
                        "name": "Giulia Rossi",
                        "profile_name": "Giulia",
                        "phone_e164": "+15557654321",
                        "tags": ["vip"],
                        "lists": [{"list_id": "l_newsletter", "name": "Newsletter"}],
                        "fields": {"city": "Milan"},
                        "deleted": False,
                        "blacklisted": False,
                    },
                    "blacklisted": False,
                    "last_message": {
                        "message_id": "msg_0e1d2c3b4a5f60718293a4b5",
                        "wamid": WAMID,
                        "direction": "in",
                        "type": "text",
                        "preview": "Hi! Is my order #4471 shipped yet?",
                        "at": AT,
                    },
                    "last_activity_at": AT,
                    "unread_count": 2,
                    "window": {"open": True, "opened_at": AT, "expires_at": "2026-01-02T10:32:05Z"},
                    "created_at": AT,
                }
            ]
        }
    )

    chat_id: str
    phone_number_id: str
    wa_id: str = Field(description="the customer's number (digits, no +); empty for a BSUID-only customer")
    user_id: str | None = Field(default=None, description="the customer's business-scoped user id, if known")
    phone_e164: str | None = Field(description="null for a BSUID-only customer")
    display_name: str = Field(description="the contact's name, else the WhatsApp profile name, else the number")
    contact: ContactOut | None = Field(description="from contacts.v1; null until the contact is known")
    blacklisted: bool = Field(description="the contact is deleted/blacklisted: it is never messaged")
    last_message: LastMessageOut | None
    last_activity_at: datetime
    unread_count: int
    window: WindowOut
    created_at: datetime

    @classmethod
    def from_doc(cls, doc: Document, now: datetime) -> ChatOut:
        contact = doc.get("contact")
        name = (contact or {}).get("name") or (contact or {}).get("profile_name") or doc.get("profile_name")
        expires = doc.get("window_expires_at")
        return cls(
            chat_id=doc["chat_id"],
            phone_number_id=doc["phone_number_id"],
            wa_id=doc["wa_id"],
            user_id=doc.get("user_id"),
            phone_e164=e164_of(doc["wa_id"]),
            display_name=name or e164_of(doc["wa_id"]) or doc.get("user_id") or "",
            contact=ContactOut.model_validate(contact) if contact else None,
            blacklisted=bool(contact and contact.get("blacklisted")),
            last_message=LastMessageOut.model_validate(doc["last_message"]) if doc.get("last_message") else None,
            last_activity_at=doc["last_activity_at"],
            unread_count=doc["unread_count"],
            window=WindowOut(
                open=domain.window_open(expires, now), opened_at=doc.get("window_opened_at"), expires_at=expires
            ),
            created_at=doc["created_at"],
        )


class ChatPage(BaseModel):
    items: list[ChatOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class NewChat(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"phone": "+1 555 765 4321", "opened_by": "agent:giulia"}]},
    )

    # The pattern is the schema's; the domain checks the number itself and answers `invalid_phone`.
    phone: str = Field(
        min_length=3,
        max_length=40,
        json_schema_extra={"pattern": PHONE_PATTERN},
        description="international form, e.g. +15557654321",
    )
    phone_number_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,20}$",
        description="which of the tenant's WhatsApp numbers; the first one if omitted",
    )
    opened_by: Agent = "api"


class ReadBy(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"by": "agent:giulia"}]})
    by: Agent = "api"


class MarkedAllRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"chats_marked_read": 3}]})
    chats_marked_read: int
