"""The REST API's models of a chat's timeline: messages, notes, and what an agent sends."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from waflow_common.events.inbound import (
    ButtonContent,
    ContactsContent,
    EditContent,
    InteractiveContent,
    LocationContent,
    MediaContent,
    OrderContent,
    ReactionContent,
    RevokeContent,
    SystemContent,
    TextContent,
    UnsupportedContent,
)

from waflow_conversation.repository import Document
from waflow_conversation.schemas import AT, ID, WAMID, Agent, NoteText, Strict

# --- messages --------------------------------------------------------------------------------------------------


class TemplateContent(BaseModel):
    type: Literal["template"] = "template"
    name: str
    language: str
    parameters: dict[str, str] | list[str]


MessageContentOut = Annotated[
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
    | UnsupportedContent
    | TemplateContent,
    Field(discriminator="type"),
]


class ReactionOut(BaseModel):
    emoji: str
    by: Literal["customer"]
    at: datetime


class QuotedMessageOut(BaseModel):
    wamid: str
    message_id: str | None = Field(description="null when the quoted message is not in this chat's history")
    direction: Literal["in", "out"] | None
    type: str | None
    preview: str | None


class FailureOut(BaseModel):
    reason: str = Field(description="blacklisted, window_closed, template_unknown, meta_error, gave_up, ...")
    message: str
    code: int | None = None
    title: str | None = None


class VersionOut(BaseModel):
    content: MessageContentOut
    at: datetime = Field(description="when this version was written (the message's time, or the edit's)")


DeliveryStatus = Literal["pending", "accepted", "sent", "delivered", "read", "played", "failed"]


MESSAGE_EXAMPLE: dict[str, Any] = {
    "kind": "message",
    "message_id": "msg_0e1d2c3b4a5f60718293a4b5",
    "chat_id": "ch_5f1c0e6e0d7a4c2b9e1f3a7d",
    "wamid": WAMID,
    "direction": "out",
    "type": "text",
    "content": {"type": "text", "body": "Yes, it left our warehouse this morning."},
    "at": AT,
    "status": "read",
    "status_at": "2026-01-01T10:33:10Z",
    "failure": None,
    "reactions": [{"emoji": "👍", "by": "customer", "at": "2026-01-01T10:34:00Z"}],
    "reply_to": None,
    "unread": False,
    "requested_by": "agent:giulia",
    "edited_at": None,
    "history": [],
    "revoked_at": None,
}


class MessageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [MESSAGE_EXAMPLE]})

    kind: Literal["message"] = "message"
    message_id: str
    chat_id: str
    wamid: str | None = Field(description="null until WhatsApp accepted an outgoing message")
    direction: Literal["in", "out"]
    type: str
    content: MessageContentOut | None = Field(
        description="what it shows now (the newest edit's text or caption); null once the customer deleted it"
    )
    at: datetime = Field(description="Meta's timestamp for inbound messages; when the agent sent it for outbound")
    status: DeliveryStatus | None = Field(description="outgoing messages only")
    status_at: datetime | None
    failure: FailureOut | None
    reactions: list[ReactionOut]
    reply_to: QuotedMessageOut | None
    unread: bool = Field(description="an agent marked it unread")
    requested_by: str | None
    edited_at: datetime | None = Field(description="when the customer last edited it; null if never")
    history: list[VersionOut] = Field(
        description="the versions before its edits, oldest first; empty if never edited or once deleted"
    )
    revoked_at: datetime | None = Field(
        description="when the customer deleted it for everyone: it stays in the timeline without its content"
    )

    @classmethod
    def from_doc(cls, doc: Document) -> MessageOut:
        wamid: str = doc["wamid"]
        outgoing = doc["direction"] == "out"
        revoked = doc.get("revoked_at") is not None  # kept in the document for audit, never shown
        return cls(
            message_id=doc["message_id"],
            chat_id=doc["chat_id"],
            wamid=None if wamid.startswith("pending:") else wamid,
            direction=doc["direction"],
            type=doc["type"],
            content=None if revoked else doc["content"],
            at=doc["at"],
            status=doc.get("status") if outgoing else None,
            status_at=doc.get("status_at") if outgoing else None,
            failure=doc.get("failure") if outgoing else None,
            reactions=doc.get("reactions", []),
            reply_to=doc.get("reply_to"),
            unread=bool(doc.get("manual_unread")),
            requested_by=doc.get("requested_by"),
            edited_at=doc.get("edited_at"),
            history=[] if revoked else doc.get("history", []),
            revoked_at=doc.get("revoked_at"),
        )


class NoteOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "note",
                    "note_id": "note_7d3c0a9e2b4f4e61a8c5",
                    "chat_id": "ch_5f1c0e6e0d7a4c2b9e1f3a7d",
                    "author": "agent:giulia",
                    "text": "Customer prefers a call after 6pm.",
                    "at": AT,
                }
            ]
        }
    )

    kind: Literal["note"] = "note"
    note_id: str
    chat_id: str
    author: str
    text: str
    at: datetime

    @classmethod
    def from_doc(cls, doc: Document) -> NoteOut:
        return cls(note_id=doc["note_id"], chat_id=doc["chat_id"], author=doc["author"], text=doc["text"], at=doc["at"])


TimelineItem = Annotated[MessageOut | NoteOut, Field(discriminator="kind")]


class TimelinePage(BaseModel):
    items: list[TimelineItem] = Field(description="newest first: messages and notes")
    next_cursor: str | None


class NotePage(BaseModel):
    items: list[NoteOut]
    next_cursor: str | None


class NewNote(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"author": "agent:giulia", "text": "Customer prefers a call after 6pm."}]},
    )
    author: Agent
    text: NoteText


class SendText(Strict):
    type: Literal["text"]
    body: str = Field(min_length=1, max_length=4096)
    preview_url: StrictBool = False
    reply_to: ID | None = Field(default=None, description="message_id in this chat to quote")
    requested_by: Agent = "api"


class SendTemplate(Strict):
    type: Literal["template"]
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(default="en", min_length=2, max_length=15)
    parameters: dict[str, str] | list[str] = Field(default_factory=dict)
    reply_to: ID | None = None
    requested_by: Agent = "api"


SendMessage = Annotated[SendText | SendTemplate, Field(discriminator="type")]

SEND_EXAMPLES: dict[str, Any] = {
    "text": {
        "summary": "Free-form text (only inside the 24-hour window)",
        "value": {"type": "text", "body": "Yes, it left our warehouse this morning.", "requested_by": "agent:giulia"},
    },
    "template": {
        "summary": "An approved template (allowed at any time)",
        "value": {
            "type": "template",
            "name": "open_template",
            "language": "en",
            "parameters": {"SENTENCE": "for writing to us"},
            "requested_by": "agent:giulia",
        },
    },
}


class SendAcceptedOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "req_3b9a7c1e5d2f4a6b8c0d1e2f",
                    "message": MESSAGE_EXAMPLE
                    | {"direction": "out", "wamid": None, "status": "pending", "status_at": AT, "reactions": []},
                }
            ]
        }
    )
    request_id: str
    message: MessageOut
