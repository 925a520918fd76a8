"""Kafka subscribers: send commands, the window and blacklist projections, template webhooks, read receipts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import TypeAdapter, ValidationError
from waflow_common import topics
from waflow_common.events.contacts import ContactChangedEvent
from waflow_common.events.conversation import ChatReadEvent, ConversationEvent, conversation_adapter
from waflow_common.events.dead_letter import DeadLetter
from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import InboundEvent, MessageReceivedEvent, TemplateStatusEvent, inbound_adapter
from waflow_common.events.outbound import SendRequestedEvent, outbound_command_adapter
from waflow_common.kafka import Consumer, EventPublisher
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_outbound.catalog import TemplateCatalog
from waflow_outbound.lanes import Job
from waflow_outbound.repository import OutboundRepository
from waflow_outbound.sending import Dispatcher, job_of, read_job_of, request_document

log = logging.getLogger(__name__)

contacts_adapter: TypeAdapter[ContactChangedEvent] = TypeAdapter(ContactChangedEvent)


@dataclass
class OutboundHandlers:
    repository: OutboundRepository
    dispatcher: Dispatcher
    catalog: TemplateCatalog
    registry: TenantRegistry
    clock: Clock

    async def on_commands(self, events: list[SendRequestedEvent]) -> None:
        """Records a batch of requests (insert-if-new by request_id) and hands each to its number's lane.

        Offsets are committed when this returns, i.e. once the requests are durably recorded; from then on the
        lanes, or a restart's recovery, own them. A redelivered command finds its record and does nothing.
        One write for the whole batch: recording one by one caps intake at FerretDB's per-write latency.
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
                    message=p.message.model_dump(mode="json"),
                    reply_to=p.reply_to,
                    received_at=self.clock(),
                    correlation_id=event.correlation_id,
                    causation_id=str(event.event_id),
                )
            )
        stored = await asyncio.gather(*(self.repository.record_request(d) for d in documents))
        for document, new in zip(documents, stored, strict=True):
            if not new:
                continue
            job = job_of(document, 0)
            tenant = self.registry.tenant(job.tenant_id)
            if tenant is None or job.phone_number_id not in tenant.phone_number_ids:
                await self.dispatcher.reject(job, "invalid", "the tenant has no such phone number")
            else:
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

        CommandBatches(broker, settings, self.on_commands).subscribe()
        group("inbound").subscribe(topics.INBOUND, inbound_adapter, self.on_inbound)
        group("contacts").subscribe(topics.CONTACTS, contacts_adapter, self.on_contact)
        group("conversation").subscribe(topics.CONVERSATION, conversation_adapter, self.on_conversation)


class CommandBatches:
    """outbound.commands.v1 consumed in batches: invalid records are dead-lettered, the rest recorded together."""

    group_id = "waflow-outbound-commands"

    def __init__(
        self,
        broker: KafkaBroker,
        settings: CommonSettings,
        handler: Callable[[list[SendRequestedEvent]], Awaitable[None]],
        *,
        max_records: int = 500,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._handler = handler
        self._publisher = EventPublisher(broker, settings)
        self._max_records = max_records

    def subscribe(self) -> None:
        async def consume(message: KafkaMessage) -> None:
            raw: Any = message.raw_message
            await self.consume(list(raw) if isinstance(raw, tuple | list) else [raw])

        consume.__name__ = "waflow_outbound_commands"
        self._broker.subscriber(
            self._settings.topic(topics.OUTBOUND_COMMANDS),
            group_id=self.group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            batch=True,
            max_records=self._max_records,
            batch_timeout_ms=20,
        )(consume)

    async def consume(self, records: list[Any]) -> None:
        events: list[SendRequestedEvent] = []
        for record in records:
            try:
                events.append(outbound_command_adapter.validate_json(record.value or b""))
            except ValidationError as exc:
                await self._dead_letter(record, f"invalid event: {exc}", type(exc).__name__)
        if events:
            # Failures propagate: the batch is not committed and comes again (recording is idempotent).
            await self._handler(events)

    async def _dead_letter(self, record: Any, error: str, error_type: str) -> None:
        headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            value=bytes(record.value or b"").decode("utf-8", "replace"),
            headers=headers,
            error=error[:8000],
            error_type=error_type,
            consumer=self.group_id,
            attempts=1,
            failed_at=datetime.now(UTC),
        )
        log.error("dead-lettered a command", extra={"offset": record.offset, "error": error[:500]})
        await self._publisher.publish_raw(
            topics.dlq(topics.OUTBOUND_COMMANDS),
            letter.model_dump_json().encode(),
            key=record.key,
            headers=headers | {"dlq_error_type": error_type, "dlq_consumer": self.group_id},
        )
