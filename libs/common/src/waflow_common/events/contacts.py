"""contacts.v1 (compacted): the full snapshot of a contact after every change."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from waflow_common import topics
from waflow_common.events.envelope import Envelope, Payload


class ContactListRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    list_id: str
    name: str


class ContactSnapshot(Payload):
    contact_id: str
    wa_id: str = Field(description="Meta's id for the customer: digits, no +")
    phone_e164: str
    name: str | None = Field(default=None, description="the name agents gave; wins over the profile name")
    profile_name: str | None = None
    tags: list[str] = Field(default_factory=list)
    lists: list[ContactListRef] = Field(default_factory=list)
    fields: dict[str, Any] = Field(default_factory=dict, description="dynamic field values by key")
    deleted: bool = False
    blacklisted: bool = Field(default=False, description="a deleted contact is blacklisted: never messaged")
    deleted_at: AwareDatetime | None = None
    deleted_by: str | None = None
    first_seen_at: AwareDatetime | None = None
    last_seen_at: AwareDatetime | None = None
    updated_at: AwareDatetime
    version: int = Field(description="grows by one with every change; consumers keep the highest")


class ContactChangedEvent(Envelope[ContactSnapshot]):
    topic: ClassVar[str] = topics.CONTACTS
    event_type: Literal["contact.changed"] = "contact.changed"
    schema_version: Literal[1] = 1
