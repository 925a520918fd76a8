"""conversation.v1: what happens to chats, for other systems, automations, contacts and outbound."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, TypeAdapter

from waflow_common import topics
from waflow_common.events.envelope import Envelope, Payload


class ChatRef(Payload):
    chat_id: str
    phone_number_id: str
    wa_id: str = Field(description="the customer's number (digits, no +); empty for a BSUID-only customer")
    user_id: str | None = Field(default=None, description="the customer's business-scoped user id, if known")


class ChatOpened(ChatRef):
    """An agent opened a chat by phone number: contacts creates the contact if it has none."""

    phone_e164: str
    opened_by: str


class WindowChanged(ChatRef):
    opened_at: AwareDatetime | None = None
    expires_at: AwareDatetime


class ChatRead(ChatRef):
    read_by: str
    last_inbound_wamid: str | None = Field(default=None, description="outbound marks it read on WhatsApp")


class ChatUnread(ChatRef):
    unread_count: int
    marked_by: str | None = None


class NoteAdded(ChatRef):
    note_id: str
    author: str
    text: str
    created_at: AwareDatetime


class ChatOpenedEvent(Envelope[ChatOpened]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["chat.opened"] = "chat.opened"
    schema_version: Literal[1] = 1


class WindowOpenedEvent(Envelope[WindowChanged]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["window.opened"] = "window.opened"
    schema_version: Literal[1] = 1


class WindowClosingEvent(Envelope[WindowChanged]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["window.closing"] = "window.closing"
    schema_version: Literal[1] = 1


class WindowClosedEvent(Envelope[WindowChanged]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["window.closed"] = "window.closed"
    schema_version: Literal[1] = 1


class ChatReadEvent(Envelope[ChatRead]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["chat.read"] = "chat.read"
    schema_version: Literal[1] = 1


class ChatUnreadEvent(Envelope[ChatUnread]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["chat.unread"] = "chat.unread"
    schema_version: Literal[1] = 1


class NoteAddedEvent(Envelope[NoteAdded]):
    topic: ClassVar[str] = topics.CONVERSATION
    event_type: Literal["note.added"] = "note.added"
    schema_version: Literal[1] = 1


ConversationEvent = Annotated[
    ChatOpenedEvent
    | WindowOpenedEvent
    | WindowClosingEvent
    | WindowClosedEvent
    | ChatReadEvent
    | ChatUnreadEvent
    | NoteAddedEvent,
    Field(discriminator="event_type"),
]
conversation_adapter: TypeAdapter[ConversationEvent] = TypeAdapter(ConversationEvent)
