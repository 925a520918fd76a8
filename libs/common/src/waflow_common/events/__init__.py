"""Every waflow event type, defined once; services import them from here."""

from __future__ import annotations

from typing import Any

from waflow_common.events.contacts import ContactChangedEvent
from waflow_common.events.conversation import (
    ChatOpenedEvent,
    ChatReadEvent,
    ChatUnreadEvent,
    NoteAddedEvent,
    WindowClosedEvent,
    WindowClosingEvent,
    WindowOpenedEvent,
)
from waflow_common.events.envelope import Envelope
from waflow_common.events.inbound import (
    AccountUpdateEvent,
    MessageReceivedEvent,
    MessageStatusEvent,
    TemplateStatusEvent,
)
from waflow_common.events.outbound import SendAcceptedEvent, SendRejectedEvent, SendRequestedEvent
from waflow_common.events.tenants import AppUpsertedEvent, TenantUpsertedEvent
from waflow_common.events.webhooks import WebhookReceivedEvent

ALL_EVENTS: tuple[type[Envelope[Any]], ...] = (
    WebhookReceivedEvent,
    MessageReceivedEvent,
    MessageStatusEvent,
    TemplateStatusEvent,
    AccountUpdateEvent,
    ContactChangedEvent,
    SendRequestedEvent,
    SendAcceptedEvent,
    SendRejectedEvent,
    ChatOpenedEvent,
    WindowOpenedEvent,
    WindowClosingEvent,
    WindowClosedEvent,
    ChatReadEvent,
    ChatUnreadEvent,
    NoteAddedEvent,
    AppUpsertedEvent,
    TenantUpsertedEvent,
)


def event_class(event_type: str) -> type[Envelope[Any]]:
    for cls in ALL_EVENTS:
        if cls.model_fields["event_type"].default == event_type:
            return cls
    raise KeyError(event_type)
