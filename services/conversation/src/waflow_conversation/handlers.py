"""Kafka subscribers (inbound messages and statuses, contacts, outbound results) and the window sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from pydantic import TypeAdapter
from pymongo.errors import PyMongoError
from waflow_common import topics
from waflow_common.events.contacts import ContactChangedEvent
from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import (
    InboundEvent,
    MessageReceived,
    MessageReceivedEvent,
    MessageStatus,
    MessageStatusEvent,
    inbound_adapter,
)
from waflow_common.events.outbound import OutboundResult, SendAcceptedEvent, outbound_result_adapter
from waflow_common.kafka import TRANSIENT_ERRORS, Consumer
from waflow_common.leases import Leases, run_leased
from waflow_common.tenants import TenantRegistry

from waflow_conversation.repository import Cause, ChatRepository
from waflow_conversation.repository_messages import MessageRepository

log = logging.getLogger(__name__)

EVENTS = Counter("waflow_conversation_events_total", "Events consumed by conversation", ["event_type"])
WINDOW_EVENTS = Counter("waflow_conversation_window_announcements_total", "window.closing/closed announced")

contact_adapter: TypeAdapter[ContactChangedEvent] = TypeAdapter(ContactChangedEvent)

GROUP_ID = "conversation"
SWEEP_RETRYABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, PyMongoError)


class MissingTenant(ValueError):
    """An event of a tenant-scoped topic without a tenant: it can never be applied (dead-lettered)."""


def _tenant(event: Any) -> str:
    tenant_id: str | None = event.tenant_id
    if not tenant_id:
        raise MissingTenant(f"{event.event_type} {event.event_id} has no tenant_id")
    return tenant_id


class ConversationHandlers:
    def __init__(self, chats: ChatRepository, messages: MessageRepository) -> None:
        self._chats = chats
        self._messages = messages
        self._concurrency = 1

    def subscribe(self, consumer: Consumer, *, concurrency: int) -> None:
        # Batched: one commit per batch, and different chats applied side by side. Records of one chat share a
        # key (and so a partition), and those are applied in their order.
        self._concurrency = concurrency
        consumer.subscribe_batched(
            topics.INBOUND, inbound_adapter, self.on_inbound, concurrency=concurrency, apply_many=self.on_inbound_many
        )
        consumer.subscribe_batched(topics.CONTACTS, contact_adapter, self.on_contact, concurrency=concurrency)
        consumer.subscribe_batched(
            topics.OUTBOUND_RESULTS, outbound_result_adapter, self.on_result, concurrency=concurrency
        )

    async def on_inbound(self, event: InboundEvent) -> None:
        """One record: what a batch falls back to when it cannot be applied as a whole."""
        await self.on_inbound_many([event])

    async def on_inbound_many(self, events: Sequence[InboundEvent]) -> None:
        """A batch: the customers' messages written together per tenant, then the statuses (forward-only, so
        their order does not matter). template.status and account.update concern outbound and operators."""
        received: dict[str, list[tuple[MessageReceived, Cause | None]]] = {}
        statuses: list[tuple[str, MessageStatus]] = []
        for event in events:
            if isinstance(event, MessageReceivedEvent):
                cause = Cause(event.correlation_id, event.event_id)
                received.setdefault(_tenant(event), []).append((event.payload, cause))
            elif isinstance(event, MessageStatusEvent):
                statuses.append((_tenant(event), event.payload))
        for tenant_id, messages in received.items():
            await self._messages.record_inbound(tenant_id, messages)
        slots = asyncio.Semaphore(self._concurrency)

        async def apply(tenant_id: str, status: MessageStatus) -> None:
            async with slots:
                await self._messages.statuses.apply_status(tenant_id, status)

        await asyncio.gather(*(apply(tenant_id, status) for tenant_id, status in statuses))
        for event in events:
            EVENTS.labels(event.event_type).inc()

    async def on_contact(self, event: ContactChangedEvent) -> None:
        EVENTS.labels(event.event_type).inc()
        await self._chats.apply_contact(_tenant(event), event.payload)

    async def on_result(self, event: OutboundResult) -> None:
        EVENTS.labels(event.event_type).inc()
        if isinstance(event, SendAcceptedEvent):
            await self._messages.statuses.accept(_tenant(event), event.payload)
        else:
            await self._messages.statuses.reject(_tenant(event), event.payload)


class WindowSweeper:
    """Finds windows about to close or closed (by the chats' `window_due` index) and announces them.

    Runs under a lease (waflow_common.leases), so one instance sweeps at a time; each announcement is also claimed
    by a conditional update (see ChatActivity.sweep_windows), so even two sweeps at once announce it once.
    """

    LEASE = "conversation-window-sweep"

    def __init__(
        self,
        chats: ChatRepository,
        registry: TenantRegistry,
        clock: Clock,
        *,
        interval_seconds: float,
        leases: Leases | None = None,
    ) -> None:
        self._chats = chats
        self._registry = registry
        self._clock = clock
        self._interval = interval_seconds
        self._leases = leases
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        now = self._clock()
        announced = 0
        for tenant in self._registry.tenants():
            lead = timedelta(minutes=tenant.record.window_closing_lead_minutes)
            announced += await self._chats.sweep_windows(tenant.tenant_id, now, lead)
        if announced:
            WINDOW_EVENTS.inc(announced)
        return announced

    async def run(self) -> None:
        if self._leases is not None:
            await run_leased(self._leases, self.LEASE, self.sweep_once, every=self._interval, retryable=SWEEP_RETRYABLE)
            return
        while True:
            try:
                await self.sweep_once()
            except SWEEP_RETRYABLE as exc:
                log.warning("window sweep failed; will retry", extra={"error": repr(exc)})
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="window-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
