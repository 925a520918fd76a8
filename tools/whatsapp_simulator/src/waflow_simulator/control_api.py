"""Routes of the control plane (`/_sim/...`) that tests and benchmarks use to drive the simulator."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from waflow_simulator.background import Background
from waflow_simulator.customers import Customers
from waflow_simulator.models import (
    App,
    AppConfig,
    BatchResult,
    CustomerBatchRequest,
    CustomerMessageRequest,
    CustomerMessageResult,
    DeliveryRecord,
    DeliveryResult,
    FaultRequest,
    Number,
    NumberConfig,
    RawWebhookRequest,
    SentMessage,
    TemplateDef,
    UndeliverableRequest,
    WindowRef,
)
from waflow_simulator.state import SimState


class DrainResult(BaseModel):
    idle: bool
    pending: int


def control_router(state: SimState, customers: Customers, background: Background) -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["control"])

    @router.put("/apps/{app_id}")
    async def put_app(app_id: str, config: AppConfig) -> App:
        app = App(app_id=app_id, **config.model_dump())
        state.apps[app_id] = app
        return app

    @router.put("/numbers/{phone_number_id}")
    async def put_number(phone_number_id: str, config: NumberConfig) -> Number:
        number = Number(phone_number_id=phone_number_id, **config.model_dump())
        state.numbers[phone_number_id] = number
        return number

    @router.put("/wabas/{waba_id}/templates")
    async def put_templates(waba_id: str, templates: list[TemplateDef]) -> list[TemplateDef]:
        return [t.definition for t in state.templates.replace(waba_id, templates)]

    @router.post("/customers/messages")
    async def customer_message(request: CustomerMessageRequest) -> CustomerMessageResult:
        return await customers.message(request)

    @router.post("/customers/batch")
    async def customer_batch(request: CustomerBatchRequest) -> BatchResult:
        return await customers.batch(request)

    @router.post("/webhooks/raw")
    async def raw_webhook(request: RawWebhookRequest) -> DeliveryResult:
        return await customers.raw(request)

    @router.post("/windows/close", status_code=204)
    async def close_window(window: WindowRef) -> None:
        state.number(window.phone_number_id)
        state.close_window(window.phone_number_id, window.wa_id)

    @router.post("/faults", status_code=204)
    async def inject_fault(fault: FaultRequest) -> None:
        state.number(fault.phone_number_id)
        state.add_fault(fault)

    @router.post("/undeliverable", status_code=204)
    async def mark_undeliverable(request: UndeliverableRequest) -> None:
        state.undeliverable.add(request.wa_id)

    @router.get("/sent")
    async def sent(
        phone_number_id: str | None = None, to: str | None = None, type: str | None = None
    ) -> list[SentMessage]:
        """Every `/messages` call received, answered or refused, oldest first. `to` also finds a read receipt
        (by the customer inside its wamid); `type` is the kind of call: text, template, ..., or read."""
        wa_id = to.removeprefix("+") if to else None
        return [
            s
            for s in state.sent
            if (phone_number_id is None or s.phone_number_id == phone_number_id)
            and (wa_id is None or s.to == wa_id)
            and (type is None or s.type == type)
        ]

    @router.delete("/sent", status_code=204)
    async def clear_sent() -> None:
        state.sent.clear()

    @router.get("/deliveries")
    async def deliveries(app_id: str | None = None) -> list[DeliveryRecord]:
        return [d for d in state.deliveries if app_id is None or d.app_id == app_id]

    @router.post("/drain")
    async def drain(timeout: float = 30.0) -> DrainResult:
        """Wait for in-flight webhook deliveries (status flows, wait=false messages) to finish."""
        idle = await background.drain(timeout)
        return DrainResult(idle=idle, pending=background.pending)

    @router.post("/reset", status_code=204)
    async def reset() -> None:
        # In-flight deliveries belong to the traffic being forgotten; letting them land later would leak
        # one test's webhooks into the next.
        await background.cancel_all()
        state.reset()

    return router
