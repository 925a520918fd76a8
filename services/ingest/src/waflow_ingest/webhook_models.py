"""Meta's webhook body as typed models: the shape ingest accepts at its edge, before anything is published.

These models check the type and shape of the fields ingest reads and ignore the others (`extra="ignore"`, which
also keeps validation cheap on the hot path): Meta adds fields over time, and nothing is lost, because the events'
content is built from the raw items (the content models keep unknown fields) and the body is archived whole.
Lists of items (entries, changes, contacts, messages, statuses) are typed `list[Any]` here and validated one item at
a time by the domain, so one unreadable message is dead-lettered alone and the rest of the batch goes on
(REFERENCE §3: one POST may hold up to 1,000 updates); `TypedWebhook` reads the common, well-formed case at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

# --- bounds ----------------------------------------------------------------------------------------------------
# WhatsApp's own app caps a message at 65,536 characters (the API caps what a business sends at 4,096). A longer
# text, caption or edited text was not typed by a customer: the message is dead-lettered with the reason (the whole
# body stays in the archive) rather than stored, and never truncated, because a prefix shown as the customer's
# words would be a message they did not send.
MAX_TEXT_CHARS = 65_536
# Profile names are 25 characters in WhatsApp and usernames shorter still; 1,024 leaves room for any script.
MAX_NAME_CHARS = 1_024
# A serialised message or status item. A 65,536-character text of 4-byte characters is 256 KiB; everything else
# a message carries is far smaller. Bigger items (a 2 MB string in an unknown type or an extra field) are refused.
MAX_ITEM_BYTES = 512 * 1024
# Meta's payloads nest about eight levels deep. Anything that is republished must nest less than this, so that
# the events (which add their own levels) always serialise; deeper items are dead-lettered.
MAX_DEPTH = 48
# biz_opaque_callback_data is at most 512 characters when a business sends it (Meta's send API).
MAX_CALLBACK_CHARS = 512


def _unix_seconds(value: Any) -> datetime:
    """Meta's timestamps: Unix seconds, a digit string in messages/statuses, an integer in entry.time."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a Unix timestamp (digits) is expected")
    text = str(value)
    # 11 digits reach the year 5138: every value datetime can hold, and no OverflowError from a huge one.
    if not (text.isascii() and text.isdigit()) or len(text) > 11:
        raise ValueError("a Unix timestamp (up to 11 digits) is expected")
    return datetime.fromtimestamp(int(text), UTC)


UnixSeconds = Annotated[datetime, BeforeValidator(_unix_seconds)]
# Graph ids (WABA, phone number) are decimal digits.
GraphId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]
# A wa_id is the customer's number in digits; Meta sends "" when it gives only a business-scoped user id.
WaId = Annotated[str, StringConstraints(pattern=r"^[0-9]{0,20}$")]
# A BSUID: a two-letter country code, a period, up to 128 alphanumerics; a parent BSUID adds "ENT." (e.g.
# US.ENT.11815799212886844830). Its letters keep it apart from a wa_id (waflow_common.customers relies on that).
Bsuid = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}(\.[A-Za-z0-9]{1,128}){1,2}$")]
# An empty BSUID is read as none given, like an empty wa_id.
MaybeBsuid = Annotated[Bsuid | None, BeforeValidator(lambda value: None if value == "" else value)]
Wamid = Annotated[str, StringConstraints(pattern=r"^wamid\.[A-Za-z0-9+/=_-]{1,512}$")]
TypeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
ShortText = Annotated[str, StringConstraints(max_length=1_024)]


class MetaModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WebhookBody(MetaModel):
    object: Literal["whatsapp_business_account"] | None = None
    entry: list[Any]


class Entry(MetaModel):
    id: GraphId = Field(description="the WABA id")
    time: UnixSeconds | None = None
    changes: list[Any] = Field(default_factory=list)


class Change(MetaModel):
    field: TypeName
    value: dict[str, Any]


class Metadata(MetaModel):
    phone_number_id: GraphId
    display_phone_number: Annotated[str, StringConstraints(max_length=32)] | None = None


class MessagesValue(MetaModel):
    """The value of a `messages` change: who wrote, what they wrote, what happened to what we sent."""

    metadata: Metadata
    contacts: list[Any] = Field(default_factory=list)
    messages: list[Any] = Field(default_factory=list)
    statuses: list[Any] = Field(default_factory=list)
    errors: list[dict[str, Any]] = Field(default_factory=list)


class Profile(MetaModel):
    name: Name | None = None
    username: Name | None = None


class Contact(MetaModel):
    """`value.contacts[]`: the sender's profile, matched to a message by wa_id or by BSUID."""

    wa_id: WaId = ""
    user_id: MaybeBsuid = None
    profile: Profile | None = None


class ErrorData(MetaModel):
    details: Annotated[str, StringConstraints(max_length=8_192)] | None = None


class MetaError(MetaModel):
    code: int
    title: ShortText | None = None
    message: Annotated[str, StringConstraints(max_length=8_192)] | None = None
    error_data: ErrorData | None = None
    href: ShortText | None = None


class ReferredProduct(MetaModel):
    catalog_id: ShortText
    product_retailer_id: ShortText


class Context(MetaModel):
    from_: ShortText | None = Field(default=None, alias="from")
    id: Wamid | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: ReferredProduct | None = None


class InboundMessage(MetaModel):
    """`value.messages[]`. The content object (named like the type) is read by `message_content`."""

    from_: WaId = Field(default="", alias="from")
    from_user_id: MaybeBsuid = None
    id: Wamid
    timestamp: UnixSeconds
    type: TypeName
    context: Context | None = None
    referral: dict[str, Any] | None = None
    errors: list[MetaError] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_a_sender(self) -> InboundMessage:
        if not self.from_ and not self.from_user_id:
            raise ValueError("neither `from` nor `from_user_id`: nobody to attribute the message to")
        return self


class InboundStatus(MetaModel):
    """`value.statuses[]`: what happened to a message the business sent."""

    id: Wamid
    status: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
    timestamp: UnixSeconds
    recipient_id: WaId = ""
    recipient_user_id: MaybeBsuid = None
    conversation: dict[str, Any] | None = None
    pricing: dict[str, Any] | None = None
    errors: list[MetaError] = Field(default_factory=list)
    biz_opaque_callback_data: Annotated[str, StringConstraints(max_length=MAX_CALLBACK_CHARS)] | None = None

    @model_validator(mode="after")
    def _has_a_recipient(self) -> InboundStatus:
        if not self.recipient_id and not self.recipient_user_id:
            raise ValueError("neither `recipient_id` nor `recipient_user_id`: no customer to attribute it to")
        return self


class TypedMessagesValue(MetaModel):
    metadata: Metadata
    contacts: list[Contact] = Field(default_factory=list)
    messages: list[InboundMessage] = Field(default_factory=list)
    statuses: list[InboundStatus] = Field(default_factory=list)
    errors: list[dict[str, Any]] = Field(default_factory=list)


class TypedChange(MetaModel):
    field: Literal["messages"]
    value: TypedMessagesValue


class TypedEntry(MetaModel):
    id: GraphId
    time: UnixSeconds | None = None
    changes: list[TypedChange] = Field(default_factory=list)


class TypedWebhook(MetaModel):
    """The common case read in one validation: only `messages` changes, every item well formed. When it fails, the
    domain reads the body layer by layer to find (and dead-letter) just the parts that are wrong."""

    object: Literal["whatsapp_business_account"] | None = None
    entry: list[TypedEntry]


def nesting_within(value: dict[str, Any] | list[Any], limit: int = MAX_DEPTH) -> bool:
    """True when lists and objects in `value` nest at most `limit` levels deep (recursion bounded by `limit`)."""
    for child in value.values() if isinstance(value, dict) else value:
        if isinstance(child, dict | list) and (limit <= 1 or not nesting_within(child, limit - 1)):
            return False
    return True
