"""Kafka subscribers: send commands, the window and blacklist projections, template webhooks, read receipts."""

from __future__ import annotations

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
from waflow_outbound.lanes import Job
from waflow_outbound.repository import OutboundRepository
from waflow_outbound.sending import Dispatcher, job_of, read_job_of, request_document

contacts_adapter: TypeAdapter[ContactChangedEvent] = TypeAdapter(ContactChangedEvent)


@dataclass
class OutboundHandlers:
    repository: OutboundRepository
    dispatcher: Dispatcher
    catalog: TemplateCatalog
    registry: TenantRegistry
    clock: Clock

    async def on_command(self, event: SendRequestedEvent) -> None:
        """Records the request (insert-if-new by request_id) and hands it to its number's lane.

        The offset is committed when this returns, i.e. once the request is durably recorded; from then on
        the lane, or a restart's recovery, owns it. A redelivered command finds its record and does nothing.
        """
        p = event.payload
        assert event.tenant_id is not None
        document = request_document(
            tenant_id=event.tenant_id,
            request_id=p.request_id,
            phone_number_id=p.phone_number_id,
            wa_id=p.wa_id,
            message=p.message.model_dump(mode="json"),
            reply_to=p.reply_to,
            received_at=self.clock(),
            correlation_id=event.correlation_id,
            causation_id=str(event.event_id),
        )
        if not await self.repository.record_request(document):
            return
        job = job_of(document, 0)
        tenant = self.registry.tenant(event.tenant_id)
        if tenant is None or p.phone_number_id not in tenant.phone_number_ids:
            await self.dispatcher.reject(job, "invalid", "the tenant has no such phone number")
            return
        self.dispatcher.submit(job)

    async def on_inbound(self, event: InboundEvent) -> None:
        if event.tenant_id is None:
            return
        if isinstance(event, MessageReceivedEvent) and event.payload.opens_window:
            m = event.payload
            await self.repository.record_inbound(event.tenant_id, m.phone_number_id, m.wa_id, m.wamid, m.timestamp)
        elif isinstance(event, TemplateStatusEvent):
            self.catalog.request_sync(event.tenant_id, event.payload.waba_id)

    async def on_contact(self, event: ContactChangedEvent) -> None:
        if event.tenant_id is None:
            return
        c = event.payload
        await self.repository.record_contact(event.tenant_id, c.wa_id, c.version, c.blacklisted or c.deleted)

    async def on_conversation(self, event: ConversationEvent) -> None:
        if not isinstance(event, ChatReadEvent) or event.tenant_id is None:
            return
        read = event.payload
        if read.last_inbound_wamid is None:
            return
        tenant = self.registry.tenant(event.tenant_id)
        if tenant is None or read.phone_number_id not in tenant.phone_number_ids:
            return
        document = {
            "_id": f"{event.tenant_id}:read:{read.last_inbound_wamid}",
            "tenant_id": event.tenant_id,
            "wamid": read.last_inbound_wamid,
            "phone_number_id": read.phone_number_id,
            "wa_id": read.wa_id,
            "received_at": self.clock(),
            "correlation_id": event.correlation_id,
        }
        if await self.repository.record_read(document):
            job: Job = read_job_of(document)
            self.dispatcher.submit(job)

    def subscribe(self, broker: KafkaBroker, settings: CommonSettings) -> None:
        """One consumer group per topic, so a backlog of one topic never holds up another's offsets."""

        def group(name: str) -> Consumer:
            return Consumer(broker, settings, group_id=f"waflow-outbound-{name}")

        group("commands").subscribe(topics.OUTBOUND_COMMANDS, outbound_command_adapter, self.on_command)
        group("inbound").subscribe(topics.INBOUND, inbound_adapter, self.on_inbound)
        group("contacts").subscribe(topics.CONTACTS, contacts_adapter, self.on_contact)
        group("conversation").subscribe(topics.CONVERSATION, conversation_adapter, self.on_conversation)
