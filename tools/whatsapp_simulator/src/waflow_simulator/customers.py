"""The customer side: messages written to business numbers, batches and raw bodies, as signed webhooks."""

from __future__ import annotations

import random
from typing import Any

from waflow_simulator.background import Background
from waflow_simulator.clock import Clock
from waflow_simulator.envelopes import Inbound, customer_envelope, inbound, window_openers
from waflow_simulator.ids import inbound_wamid
from waflow_simulator.models import (
    App,
    BatchResult,
    CustomerBatchRequest,
    CustomerMessage,
    CustomerMessageRequest,
    CustomerMessageResult,
    DeliveryKind,
    DeliveryResult,
    RawWebhookRequest,
)
from waflow_simulator.state import SimState
from waflow_simulator.webhooks import WebhookDispatcher


class MixedApps(ValueError):
    """A batch names numbers of different Meta apps, which no single webhook POST can carry."""


class Customers:
    def __init__(
        self,
        state: SimState,
        clock: Clock,
        dispatcher: WebhookDispatcher,
        background: Background,
        rng: random.Random,
    ) -> None:
        self._state = state
        self._clock = clock
        self._dispatcher = dispatcher
        self._background = background
        self._rng = rng

    async def message(self, request: CustomerMessageRequest) -> CustomerMessageResult:
        item = self._inbound(request)
        app = self._state.app(item.number.app_id)
        result = await self._deliver(app, customer_envelope([item]), "message", request.duplicates, request.wait)
        return CustomerMessageResult(wamid=item.message["id"], **result.model_dump())

    async def batch(self, request: CustomerBatchRequest) -> BatchResult:
        items = [self._inbound(message) for message in request.messages]
        app_ids = {item.number.app_id for item in items}
        if len(app_ids) > 1:
            raise MixedApps(f"a batch goes to one app, these numbers belong to {sorted(app_ids)}")
        app = self._state.app(app_ids.pop())
        ordered = self._shuffled(items) if request.shuffle else items
        result = await self._deliver(app, customer_envelope(ordered), "message", request.duplicates, request.wait)
        return BatchResult(wamids=[item.message["id"] for item in items], **result.model_dump())

    async def raw(self, request: RawWebhookRequest) -> DeliveryResult:
        app = self._state.app(request.app_id)
        return await self._deliver(app, request.body, "raw", request.duplicates, request.wait)

    def _inbound(self, message: CustomerMessage) -> Inbound:
        number = self._state.number(message.phone_number_id)
        timestamp = message.timestamp if message.timestamp is not None else int(self._clock.now())
        return inbound(number, message, message.wamid or inbound_wamid(message.from_), timestamp)

    def _shuffled(self, items: list[Inbound]) -> list[Inbound]:
        """A random order that is guaranteed not to be timestamp order whenever timestamps differ."""
        ordered = list(items)
        self._rng.shuffle(ordered)
        stamps = [int(item.message["timestamp"]) for item in ordered]
        if len(set(stamps)) > 1 and stamps == sorted(stamps):
            ordered.reverse()
        return ordered

    async def _deliver(
        self, app: App, envelope: dict[str, Any], kind: DeliveryKind, duplicates: int, wait: bool
    ) -> DeliveryResult:
        # Meta opens the window when the customer writes, whether or not the webhook gets through.
        for phone_number_id, wa_id, timestamp in window_openers(envelope):
            self._state.open_window(phone_number_id, wa_id, timestamp)
        delivery = self._dispatcher.deliver(app, envelope, kind, copies=1 + duplicates)
        if wait:
            return await delivery
        self._background.spawn(delivery)
        return DeliveryResult(delivered=False, attempts=0, status_code=None)
