"""Kafka subscribers: customers' messages and agents' opened chats make or refresh contacts."""

from __future__ import annotations

from waflow_common import topics
from waflow_common.events.conversation import ChatOpenedEvent, ConversationEvent, conversation_adapter
from waflow_common.events.inbound import InboundEvent, MessageReceivedEvent, inbound_adapter
from waflow_common.kafka import Consumer

from waflow_contacts.book import Cause, ContactBook
from waflow_contacts.domain import Identity

GROUP_ID = "contacts"
# A group per topic: two subscribers sharing one group rebalance each other at every start (seconds each).
CONVERSATION_GROUP_ID = "contacts-conversation"


def subscribe(inbound: Consumer, conversation: Consumer, book: ContactBook, *, concurrency: int) -> None:
    async def on_inbound(event: InboundEvent) -> None:
        if isinstance(event, MessageReceivedEvent) and event.tenant_id:
            message = event.payload
            await book.record_message(
                event.tenant_id,
                Identity(message.wa_id, message.user_id),
                message.profile_name,
                message.timestamp,
                Cause(event.correlation_id, event.event_id),
                username=message.username,
            )

    async def on_conversation(event: ConversationEvent) -> None:
        if isinstance(event, ChatOpenedEvent) and event.tenant_id:
            chat = event.payload
            identity = Identity(chat.wa_id, chat.user_id, chat.phone_e164)
            await book.ensure(event.tenant_id, identity, Cause(event.correlation_id, event.event_id))

    # Batched: one commit per batch, different customers side by side (each contact changes by compare-and-set).
    inbound.subscribe_batched(topics.INBOUND, inbound_adapter, on_inbound, concurrency=concurrency)
    conversation.subscribe_batched(topics.CONVERSATION, conversation_adapter, on_conversation, concurrency=concurrency)
