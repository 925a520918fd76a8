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
    wa_id: str = Field(description="the customer's number as Meta's wa_id (digits, no +); empty for a BSUID-only one")
    user_id: str | None = Field(default=None, description="the customer's business-scoped user id (BSUID), if known")
    username: str | None = Field(default=None, description="the customer's WhatsApp username, if they have one")
    phone_e164: str | None = Field(default=None, description="the number in E.164; None for a BSUID-only customer")
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

    def key(self) -> str:
        """The number first, then the BSUID: contacts.v1 is compacted, so a contact's key must not change when a
        BSUID is linked to a customer known by phone (a BSUID-only contact that later shows a number moves once;
        consumers keep the highest version per contact, so the older record left under the BSUID is harmless)."""
        return f"{self.tenant_id}:{self.payload.wa_id or self.payload.user_id}"
