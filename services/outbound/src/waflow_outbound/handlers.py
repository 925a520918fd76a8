"""Kafka subscribers: send commands, the window and blacklist in the database, template webhooks, read receipts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from faststream.kafka import KafkaBroker
from pydantic import TypeAdapter
from waflow_common import topics
from waflow_common.events.contacts import ContactChangedEvent
from waflow_common.events.conversation import ChatReadEvent, ConversationEvent, conversation_adapter
from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import InboundEvent, MessageReceivedEvent, TemplateStatusEvent, inbound_adapter
from waflow_common.events.outbound import SendRequestedEvent, outbound_command_adapter
from waflow_common.kafka import Consumer
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_outbound.catalog import TemplateCatalog
from waflow_outbound.lanes import job_of, read_document, request_document
from waflow_outbound.repository import OutboundRepository
from waflow_outbound.sending import Dispatcher

log = logging.getLogger(__name__)

contacts_adapter: TypeAdapter[ContactChangedEvent] = TypeAdapter(ContactChangedEvent)


async def apply_contact(repository: OutboundRepository, event: ContactChangedEvent) -> None:
    """The contacts projection: the newest snapshot's blacklist state and ids (also `waflow-admin rebuild`)."""
    if event.tenant_id is None:
        return
    c = event.payload
    await repository.record_contact(
        event.tenant_id,
        c.wa_id,
        c.version,
        c.blacklisted or c.deleted,
        contact_id=c.contact_id,
        user_id=c.user_id,
    )


@dataclass
class OutboundHandlers:
    repository: OutboundRepository
    dispatcher: Dispatcher
    catalog: TemplateCatalog
    registry: TenantRegistry
    clock: Clock

    async def on_commands(self, events: list[SendRequestedEvent]) -> None:
        """Records a batch of requests (insert-if-new by tenant and request_id), claimed by this instance, and
        hands each new one to its number's lane.

        Offsets are committed when this returns, i.e. once the requests are durably recorded; from then on this
        instance's lanes own them, or, if it dies, whichever instance's recovery claims them when the claim
        expires. A redelivered command (on any instance) finds its record and does nothing. One write for the
        whole batch; if it fails as a whole, the consumer records its commands one by one, and dead-letters the
        one at fault.
        """
        documents = []
        for event in events:
            p = event.payload
            assert event.tenant_id is not None
            documents.append(
                request_document(
                    tenant_id=event.tenant_id,
                    request_id=p.request_id,
                    phone_number_id=p.phone_number_id,
                    wa_id=p.wa_id,
                    user_id=p.user_id,
                    message=p.message.model_dump(mode="json"),
                    reply_to=p.reply_to,
                    received_at=self.clock(),
                    correlation_id=event.correlation_id,
                    causation_id=str(event.event_id),
                )
            )
        stored = await self.repository.add_requests(documents, self.clock())
        for document, new in zip(documents, stored, strict=True):
            if not new:
                continue
            job = job_of(document)
            tenant = self.registry.tenant(job.tenant_id)
            if tenant is None or job.phone_number_id not in tenant.phone_number_ids:
                await self.dispatcher.results.reject(job, "invalid", "the tenant has no such phone number")
            else:
                self.dispatcher.submit(job)

    async def on_inbound(self, event: InboundEvent) -> None:
        if event.tenant_id is None:
            return
        if isinstance(event, MessageReceivedEvent) and event.payload.opens_window:
            m = event.payload
            await self.repository.record_inbound(
                event.tenant_id, m.phone_number_id, m.wa_id, m.wamid, m.timestamp, user_id=m.user_id
            )
        elif isinstance(event, TemplateStatusEvent):
            self.catalog.request_sync(event.tenant_id, event.payload.waba_id)

    async def on_contact(self, event: ContactChangedEvent) -> None:
        await apply_contact(self.repository, event)

    async def on_conversation(self, event: ConversationEvent) -> None:
        """An agent read a chat: mark its last customer message read on WhatsApp, if the gate lets it.

        Recorded either way (recovery on any instance resumes it); the gate decides at call time like for any
        message. Known limit: the blacklist comes from contacts.v1 and the read from conversation.v1, two topics
        followed on their own, so a read announced within moments of a deletion can reach the gate before the deletion
        does. Conversation, which already refuses to message a blacklisted chat, can close that gap by not
        naming a wamid to mark for one.
        """
        if not isinstance(event, ChatReadEvent) or event.tenant_id is None:
            return
        read = event.payload
        if read.last_inbound_wamid is None:
            return
        tenant = self.registry.tenant(event.tenant_id)
        if tenant is None or read.phone_number_id not in tenant.phone_number_ids:
            return
        document = read_document(
            tenant_id=event.tenant_id,
            wamid=read.last_inbound_wamid,
            phone_number_id=read.phone_number_id,
            wa_id=read.wa_id,
            user_id=read.user_id,
            received_at=self.clock(),
            correlation_id=event.correlation_id,
        )
        if (await self.repository.add_requests([document], self.clock()))[0]:
            self.dispatcher.submit(job_of(document))

    async def on_command(self, event: SendRequestedEvent) -> None:
        await self.on_commands([event])

    def subscribe(self, broker: KafkaBroker, settings: CommonSettings, *, concurrency: int = 16) -> None:
        """One consumer group per topic, so a backlog of one topic never holds up another's offsets. All
        batched: one commit per batch; commands are recorded with one write per batch (`on_commands`)."""

        def group(name: str) -> Consumer:
            return Consumer(broker, settings, group_id=f"waflow-outbound-{name}")

        group("commands").subscribe_batched(
            topics.OUTBOUND_COMMANDS,
            outbound_command_adapter,
            self.on_command,
            concurrency=concurrency,
            apply_many=self.on_commands,
        )
        group("inbound").subscribe_batched(topics.INBOUND, inbound_adapter, self.on_inbound, concurrency=concurrency)
        group("contacts").subscribe_batched(topics.CONTACTS, contacts_adapter, self.on_contact, concurrency=concurrency)
        group("conversation").subscribe_batched(
            topics.CONVERSATION, conversation_adapter, self.on_conversation, concurrency=concurrency
        )
