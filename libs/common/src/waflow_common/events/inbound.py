"""wa.inbound.v1: what Meta reported, normalised: messages, statuses, template and account updates.

Content models keep unknown fields (`extra="allow"`): Meta adds fields over time and nothing it sends may be lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from waflow_common import topics
from waflow_common.customers import customer_id
from waflow_common.events.envelope import Envelope, Payload


class _Content(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class TextContent(_Content):
    type: Literal["text"] = "text"
    body: str


class MediaContent(_Content):
    """image, video, audio, document and sticker share one shape; the optional fields depend on the type."""

    type: Literal["image", "video", "audio", "document", "sticker"]
    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    url: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class LocationContent(_Content):
    type: Literal["location"] = "location"
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ContactCard(_Content):
    """A vCard the customer shared (Meta's `messages[].contacts[]`), kept as Meta sent it."""

    name: dict[str, Any] = Field(default_factory=dict)
    phones: list[dict[str, Any]] = Field(default_factory=list)
    emails: list[dict[str, Any]] = Field(default_factory=list)


class ContactsContent(_Content):
    type: Literal["contacts"] = "contacts"
    contacts: list[ContactCard]


class InteractiveContent(_Content):
    """A reply to an interactive message: a button, a list row, or a completed Flow (`nfm_reply`)."""

    type: Literal["interactive"] = "interactive"
    kind: str = Field(description="button_reply, list_reply, nfm_reply, or a newer kind")
    reply_id: str | None = None
    title: str | None = None
    description: str | None = None
    flow_name: str | None = None
    flow_body: str | None = None
    response_json: str | None = Field(default=None, description="nfm_reply: the Flow's answers, a JSON string")


class ButtonContent(_Content):
    """Quick-reply button of a template."""

    type: Literal["button"] = "button"
    payload: str | None = None
    text: str


class ReactionContent(_Content):
    type: Literal["reaction"] = "reaction"
    message_id: str
    emoji: str | None = Field(default=None, description="None (or Meta's empty string) removes the reaction")


class OrderItem(_Content):
    product_retailer_id: str
    quantity: int
    item_price: float
    currency: str


class OrderContent(_Content):
    type: Literal["order"] = "order"
    catalog_id: str
    text: str | None = None
    product_items: list[OrderItem]


class SystemContent(_Content):
    type: Literal["system"] = "system"
    body: str | None = None
    system_type: str | None = Field(default=None, description="e.g. user_changed_number")
    new_wa_id: str | None = None


class EditContent(_Content):
    """Coexistence numbers only: the customer edited a message within 15 minutes."""

    type: Literal["edit"] = "edit"
    original_message_id: str
    message: dict[str, Any]


class RevokeContent(_Content):
    """Coexistence numbers only: the customer deleted a message."""

    type: Literal["revoke"] = "revoke"
    original_message_id: str


class UnsupportedContent(_Content):
    """Anything Meta marks unsupported, or a type this version does not know: the raw object is kept."""

    type: Literal["unsupported"] = "unsupported"
    original_type: str = Field(description="Meta's `type` (or `unsupported.type`, e.g. poll, edit)")
    raw: dict[str, Any]


MessageContent = Annotated[
    TextContent
    | MediaContent
    | LocationContent
    | ContactsContent
    | InteractiveContent
    | ButtonContent
    | ReactionContent
    | OrderContent
    | SystemContent
    | EditContent
    | RevokeContent
    | UnsupportedContent,
    Field(discriminator="type"),
]


class ReferredProduct(_Content):
    catalog_id: str
    product_retailer_id: str


class MessageContext(_Content):
    """Reply/quote (`quoted_wamid`), forwarding flags, or the product a "Message business" came from."""

    quoted_wamid: str | None = None
    quoted_from: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: ReferredProduct | None = None


class Referral(_Content):
    """Click-to-WhatsApp ad the conversation started from."""

    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    body: str | None = None
    headline: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None


class MetaErrorDetail(_Content):
    code: int
    title: str | None = None
    message: str | None = None
    details: str | None = None
    href: str | None = None


class MessageReceived(Payload):
    wamid: str
    phone_number_id: str
    display_phone_number: str | None = None
    waba_id: str
    wa_id: str = Field(description="the customer's number (Meta's `from`); empty when Meta gives only a BSUID")
    user_id: str | None = Field(
        default=None, description="business-scoped user id (Meta's `from_user_id` / `contacts[].user_id`)"
    )
    username: str | None = Field(default=None, description="the customer's WhatsApp username (`profile.username`)")
    profile_name: str | None = None
    type: str = Field(description="Meta's message type as sent")
    timestamp: AwareDatetime
    content: MessageContent
    context: MessageContext | None = None
    referral: Referral | None = None
    errors: list[MetaErrorDetail] = Field(default_factory=list)

    # Every message a customer sends opens or refreshes the 24-hour window (REFERENCE §10), including one Meta
    # marks unsupported (a poll, say) and a type this version does not know: the customer still wrote. What does
    # not: system messages (Meta's own notices, e.g. a changed number), and reactions, edits and revokes, which act
    # on an earlier message (Meta does not say they refresh it; §10 counts only real messages). An edit on a
    # normal number arrives as `unsupported` with `unsupported.type: edit`, and is still an edit.
    _NOT_WINDOW_TYPES: ClassVar[frozenset[str]] = frozenset({"system", "reaction", "edit", "revoke"})

    @property
    def opens_window(self) -> bool:
        if isinstance(self.content, UnsupportedContent):
            return self.content.original_type not in self._NOT_WINDOW_TYPES
        return self.content.type not in self._NOT_WINDOW_TYPES

    @property
    def customer_id(self) -> str:
        return customer_id(self.wa_id, self.user_id)


StatusName = str  # sent | delivered | read | played | failed, or a newer one Meta adds


class Pricing(_Content):
    billable: bool | None = None
    pricing_model: str | None = None
    type: str | None = None
    category: str | None = None


class MessageStatus(Payload):
    wamid: str
    phone_number_id: str
    waba_id: str
    wa_id: str = Field(description="the recipient (Meta's `recipient_id`); empty when Meta gives only a BSUID")
    user_id: str | None = Field(default=None, description="the recipient's BSUID (Meta's `recipient_user_id`)")
    status: StatusName
    timestamp: AwareDatetime
    conversation: dict[str, Any] | None = None
    pricing: Pricing | None = None
    errors: list[MetaErrorDetail] = Field(default_factory=list)
    biz_opaque_callback_data: str | None = None

    @property
    def customer_id(self) -> str:
        return customer_id(self.wa_id, self.user_id)


class TemplateStatus(Payload):
    """A template's review or quality state changed (message_template_status_update and its siblings)."""

    waba_id: str
    field: str = Field(description="the webhook field, e.g. message_template_status_update")
    event: str = Field(description="APPROVED, REJECTED, PAUSED, ... or QUALITY_CHANGED / CATEGORY_CHANGED")
    template_id: str | None = None
    name: str | None = None
    language: str | None = None
    reason: str | None = None
    category: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, description="the rest of Meta's value, as sent")


class AccountUpdate(Payload):
    """Anything else Meta reports about an account or number: restrictions, quality, limits, value errors."""

    waba_id: str
    field: str
    event: str | None = None
    phone_number_id: str | None = None
    value: dict[str, Any]


class MessageReceivedEvent(Envelope[MessageReceived]):
    topic: ClassVar[str] = topics.INBOUND
    event_type: Literal["message.received"] = "message.received"
    schema_version: Literal[1] = 1


class MessageStatusEvent(Envelope[MessageStatus]):
    topic: ClassVar[str] = topics.INBOUND
    event_type: Literal["message.status"] = "message.status"
    schema_version: Literal[1] = 1


class TemplateStatusEvent(Envelope[TemplateStatus]):
    topic: ClassVar[str] = topics.INBOUND
    event_type: Literal["template.status"] = "template.status"
    schema_version: Literal[1] = 1


class AccountUpdateEvent(Envelope[AccountUpdate]):
    topic: ClassVar[str] = topics.INBOUND
    event_type: Literal["account.update"] = "account.update"
    schema_version: Literal[1] = 1


InboundEvent = Annotated[
    MessageReceivedEvent | MessageStatusEvent | TemplateStatusEvent | AccountUpdateEvent,
    Field(discriminator="event_type"),
]
inbound_adapter: TypeAdapter[InboundEvent] = TypeAdapter(InboundEvent)


def meta_timestamp(value: str | int) -> datetime:
    """Meta's timestamps are Unix seconds, as a string in messages/statuses and an int in entry.time."""
    return datetime.fromtimestamp(int(value), UTC)
