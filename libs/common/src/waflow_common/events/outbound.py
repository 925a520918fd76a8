"""outbound.commands.v1 and outbound.results.v1: asking outbound to send, and what became of it."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from waflow_common import topics
from waflow_common.events.envelope import Envelope, Payload


class TextMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["text"] = "text"
    body: str = Field(min_length=1, max_length=4096)
    preview_url: bool = False


class TemplateMessage(BaseModel):
    """A template by name and language; parameters by placeholder name (`SENTENCE` for %%SENTENCE%%) or position."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["template"] = "template"
    name: str
    language: str = "en"
    parameters: dict[str, str] | list[str] = Field(default_factory=dict)


OutgoingMessage = Annotated[TextMessage | TemplateMessage, Field(discriminator="type")]


class SendRequested(Payload):
    request_id: str = Field(description="idempotency key: one request_id is sent at most once")
    chat_id: str | None = None
    phone_number_id: str
    wa_id: str = Field(description="the recipient's number (Meta's `to`); empty for a BSUID-only customer")
    user_id: str | None = Field(
        default=None, description="the recipient's business-scoped user id: Meta's `recipient` when there is no wa_id"
    )
    message: OutgoingMessage
    reply_to: str | None = Field(default=None, description="wamid to quote")
    requested_by: str


RejectReason = Literal[
    "blacklisted",
    "window_closed",
    "template_unknown",
    "template_params",
    "undeliverable",
    "auth",
    "meta_error",
    "gave_up",
    "outcome_unknown",
    "invalid",
]


class MetaErrorRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    code: int
    title: str | None = None
    details: str | None = None


class SendAccepted(Payload):
    request_id: str
    phone_number_id: str
    wa_id: str
    user_id: str | None = None
    wamid: str
    message_status: str | None = Field(default=None, description="Meta's pacing state for templates")


class SendRejected(Payload):
    request_id: str
    phone_number_id: str
    wa_id: str
    user_id: str | None = None
    reason: RejectReason
    message: str
    meta_error: MetaErrorRef | None = None


class SendRequestedEvent(Envelope[SendRequested]):
    topic: ClassVar[str] = topics.OUTBOUND_COMMANDS
    event_type: Literal["send.requested"] = "send.requested"
    schema_version: Literal[1] = 1


class SendAcceptedEvent(Envelope[SendAccepted]):
    topic: ClassVar[str] = topics.OUTBOUND_RESULTS
    event_type: Literal["send.accepted"] = "send.accepted"
    schema_version: Literal[1] = 1


class SendRejectedEvent(Envelope[SendRejected]):
    topic: ClassVar[str] = topics.OUTBOUND_RESULTS
    event_type: Literal["send.rejected"] = "send.rejected"
    schema_version: Literal[1] = 1


OutboundCommand = SendRequestedEvent
outbound_command_adapter: TypeAdapter[SendRequestedEvent] = TypeAdapter(SendRequestedEvent)
OutboundResult = Annotated[SendAcceptedEvent | SendRejectedEvent, Field(discriminator="event_type")]
outbound_result_adapter: TypeAdapter[OutboundResult] = TypeAdapter(OutboundResult)
