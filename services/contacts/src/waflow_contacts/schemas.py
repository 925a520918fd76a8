"""Request and response bodies of the contacts API, with the examples OpenAPI shows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from waflow_common.events.contacts import ContactListRef, ContactSnapshot

from waflow_contacts.domain import (
    FIELD_KEY,
    MAX_CHOICE_OPTIONS,
    MAX_LIST_NAME_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS_PER_CONTACT,
    FieldType,
)

# The limits the domain enforces, said in the schema too (the OpenAPI document is the contract). What JSON
# Schema cannot say (a real numbering plan, Unicode case folding of tags) stays a 422 naming the field.
# Not blank is said with ASCII whitespace only: regex engines disagree on which other characters are spaces.
# Phones and tags are checked by the domain (which names the field and the reason in its 422); the schema says
# the same limits without pydantic checking them first.
NOT_BLANK = r"[^ \t\n\r\f\v]"
PHONE_PATTERN = r"^[0-9 +().\-/]+$"
PHONE_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": 40, "pattern": PHONE_PATTERN}
TAG_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": MAX_TAG_LENGTH}
Tag = Annotated[str, Field(json_schema_extra=TAG_SCHEMA)]
ContactIdIn = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Body(BaseModel):
    """A request body: unknown fields refused (field values are checked against their definitions)."""

    model_config = ConfigDict(extra="forbid")


CONTACT_EXAMPLE: dict[str, Any] = {
    "contact_id": "c_4f1c2a9e8b7d6c5b4a392817",
    "wa_id": "34612345678",
    "phone_e164": "+34612345678",
    "name": "María López",
    "profile_name": "Mari",
    "tags": ["vip", "returning"],
    "lists": [{"list_id": "l_9a8b7c6d5e4f3a2b", "name": "Winter campaign"}],
    "fields": {"city": "Sevilla", "orders": 3, "birthday": "1990-04-12", "newsletter": True},
    "deleted": False,
    "blacklisted": False,
    "deleted_at": None,
    "deleted_by": None,
    "first_seen_at": "2026-01-01T10:32:05Z",
    "last_seen_at": "2026-01-03T08:00:00Z",
    "updated_at": "2026-01-03T08:00:00Z",
    "version": 7,
}


class Contact(ContactSnapshot):
    """A contact as agents see it: the same fields as the contact.changed snapshot."""

    model_config = ConfigDict(json_schema_extra={"examples": [CONTACT_EXAMPLE]})


def contact_out(snapshot: ContactSnapshot) -> Contact:
    return Contact.model_validate(snapshot.model_dump())


class ContactCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"phone": "+34 612 34 56 78", "name": "María López", "fields": {"city": "Sevilla"}, "tags": ["vip"]}
            ]
        },
    )
    phone: str = Field(
        max_length=40,
        json_schema_extra=PHONE_SCHEMA,
        description="international: +34 612…, 0034 612…, or Meta's bare digits",
    )
    name: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    fields: dict[str, Any] = Field(default_factory=dict, description="dynamic field values by key")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS_PER_CONTACT)


class ContactUpdate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "María L. García", "fields": {"orders": 4, "city": None}}]},
    )
    name: str | None = Field(default=None, max_length=MAX_NAME_LENGTH, description="null clears the agent-given name")
    fields: dict[str, Any] | None = Field(default=None, description="values to set; a null value clears that field")


class TagsIn(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"tags": ["VIP", "needs callback"]}]})
    tags: list[Tag] = Field(min_length=1, max_length=MAX_TAGS_PER_CONTACT)


class ContactPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [CONTACT_EXAMPLE], "next_cursor": "WyIwbWFyaWEgbG9wZXoiXQ"}]}
    )
    items: list[Contact]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class TagCount(BaseModel):
    tag: str
    contacts: int


class TagCatalogue(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [{"tag": "returning", "contacts": 1204}, {"tag": "vip", "contacts": 87}]}]
        }
    )
    items: list[TagCount]


class FieldDefinitionIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"key": "city", "label": "City", "type": "text"},
                {"key": "tier", "label": "Tier", "type": "choice", "options": ["gold", "silver"]},
            ]
        },
    )
    key: str = Field(
        max_length=40, pattern=FIELD_KEY.pattern, description="lowercase letters, digits and _, starting with a letter"
    )
    label: str = Field(min_length=1, max_length=100, pattern=NOT_BLANK)
    type: FieldType
    options: list[str] = Field(
        default_factory=list,
        max_length=MAX_CHOICE_OPTIONS,
        description="the allowed values of a choice field (only a choice field has options, and needs one)",
    )


class FieldDefinitionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"key": "tier", "label": "Tier", "type": "choice", "options": ["gold", "silver"], "retired": False}
            ]
        }
    )
    key: str
    label: str
    type: FieldType
    options: list[str]
    retired: bool = Field(description="retired fields keep their stored values but take no new ones")


class FieldDefinitions(BaseModel):
    items: list[FieldDefinitionOut]


LIST_EXAMPLE: dict[str, Any] = {
    "list_id": "l_9a8b7c6d5e4f3a2b",
    "name": "Winter campaign",
    "members": 1250,
    "created_at": "2026-01-02T09:00:00Z",
}


class ListIn(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Winter campaign"}]})
    name: str = Field(min_length=1, max_length=MAX_LIST_NAME_LENGTH, pattern=NOT_BLANK)


class ListOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [LIST_EXAMPLE]})
    list_id: str
    name: str
    members: int = Field(description="members that are not deleted")
    created_at: datetime | None


class Lists(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [LIST_EXAMPLE]}]})
    items: list[ListOut]


class ContactLists(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [{"list_id": "l_9a8b7c6d5e4f3a2b", "name": "Winter campaign"}]}]}
    )
    items: list[ContactListRef]


class MembersIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"contact_ids": ["c_4f1c2a9e8b7d6c5b4a392817", "c_0b1c2d3e4f5a6b7c8d9e0f1a"]}]},
    )
    contact_ids: list[ContactIdIn] = Field(min_length=1, max_length=1000)


class BulkResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"changed": 2, "unchanged": 0, "not_found": ["c_ffffffffffffffffffffffff"]}]}
    )
    changed: int
    unchanged: int = Field(description="already in (or already out of) the list")
    not_found: list[str] = Field(description="ids that name no contact of this tenant; nothing was done for them")
