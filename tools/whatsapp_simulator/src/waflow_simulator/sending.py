"""The business side of `/messages`: auth, faults, Meta's rules, the answer, and the status webhooks after."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from waflow_simulator.background import Background
from waflow_simulator.clock import Clock
from waflow_simulator.envelopes import status_envelope
from waflow_simulator.errors import (
    GraphError,
    expired_token_error,
    fault_error,
    meta_error,
    status_error,
    unknown_object_error,
)
from waflow_simulator.ids import outbound_wamid, wa_id_of
from waflow_simulator.models import Number, SentMessage
from waflow_simulator.state import SimState
from waflow_simulator.template_params import check_parameters
from waflow_simulator.templates import Template
from waflow_simulator.validation import SendRequest, parse
from waflow_simulator.webhooks import WebhookDispatcher

_FLOWS: dict[str, tuple[str, ...]] = {
    "read": ("sent", "delivered", "read"),
    "delivered": ("sent", "delivered"),
    "sent": ("sent",),
    "none": (),
}
_TEMPLATE_STATUS_ERRORS = {"PAUSED": 132015, "DISABLED": 132016}
# Graph API v24.0 dropped `conversation` from status webhooks (REFERENCE.md §6).
_LAST_VERSION_WITH_CONVERSATION = 23


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def _describe(payload: Any) -> tuple[str | None, str | None]:
    """Best-effort (to, type) of any body, valid or not, for the sent log."""
    if not isinstance(payload, dict):
        return None, None
    if payload.get("status") is not None:
        message_id = payload.get("message_id")
        return (wa_id_of(message_id) if isinstance(message_id, str) else None), "read"
    to, kind = payload.get("to") or payload.get("recipient"), payload.get("type", "text")
    return (to.removeprefix("+") if isinstance(to, str) else None), (kind if isinstance(kind, str) else None)


def _conversation(conversation: tuple[str, int], category: str, *, with_expiry: bool) -> dict[str, Any]:
    """v23-style `conversation`; only the `sent` status carries its expiration."""
    key, expiration = conversation
    if with_expiry:
        return {"id": key, "expiration_timestamp": str(expiration), "origin": {"type": category}}
    return {"id": key, "origin": {"type": category}}


class Sender:
    def __init__(self, state: SimState, clock: Clock, dispatcher: WebhookDispatcher, background: Background) -> None:
        self._state = state
        self._clock = clock
        self._dispatcher = dispatcher
        self._background = background

    async def send(
        self, api_major: int, phone_number_id: str, authorization: str | None, raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one `/messages` call as (HTTP status, JSON body) and record it."""
        received_at = self._clock.now()
        payload = _decode(raw)
        try:
            number = self._authorize(phone_number_id, authorization)
            await self._inject_fault(phone_number_id)
            request = parse(payload)
            if request.type == "read":
                to, _ = _describe(payload)
                self._record(phone_number_id, to, "read", payload, None, None, received_at)
                return 200, {"success": True}
            template = self._apply_rules(number, request, received_at)
        except GraphError as error:
            to, kind = _describe(payload)
            self._record(phone_number_id, to, kind, payload, None, error.code, received_at)
            return error.http_status, error.body
        wamid = outbound_wamid(request.wa_id)
        self._record(phone_number_id, request.wa_id, request.type, payload, wamid, None, received_at)
        statuses = self._plan_statuses(number, request, wamid, template, api_major)
        if statuses:
            self._background.spawn(self._deliver_statuses(number, statuses))
        message: dict[str, str] = {"id": wamid}
        if template is not None:
            message["message_status"] = "accepted"
        return 200, {
            "messaging_product": "whatsapp",
            "contacts": [
                {"input": request.to, "user_id": request.user_id, "wa_id": ""}
                if request.user_id
                else {"input": request.to, "wa_id": request.wa_id}
            ],
            "messages": [message],
        }

    def _authorize(self, phone_number_id: str, authorization: str | None) -> Number:
        number = self._state.numbers.get(phone_number_id)
        if number is None:
            raise unknown_object_error(phone_number_id, "post")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != number.access_token:
            raise expired_token_error(self._clock.now())
        return number

    async def _inject_fault(self, phone_number_id: str) -> None:
        fault = self._state.take_fault(phone_number_id)
        if fault is None:
            return
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.fails:
            raise fault_error(fault.code, fault.http_status, self._clock.now())

    def _apply_rules(self, number: Number, request: SendRequest, now: float) -> Template | None:
        """Meta's checks, at the call's arrival (the time its throughput counts and the log shows)."""
        if not self._state.admit(number.phone_number_id, number.rate_per_second, now):
            raise meta_error(130429)
        if request.wa_id == number.display_phone_number:
            raise meta_error(131021)
        if request.type == "template":
            return self._template(number, request.body["template"])
        if not self._state.window_open(number.phone_number_id, request.wa_id, now):
            raise meta_error(131047)
        return None

    def _template(self, number: Number, spec: dict[str, Any]) -> Template:
        name, language = spec["name"], spec["language"]["code"]
        template = self._state.templates.find(number.waba_id, name, language)
        if template is None:
            raise meta_error(132001, f"template name ({name}) does not exist in {language}")
        status = template.definition.status.upper()
        if status in _TEMPLATE_STATUS_ERRORS:
            raise meta_error(_TEMPLATE_STATUS_ERRORS[status])
        if status != "APPROVED":
            raise meta_error(132001, f"template name ({name}) is not approved in {language} (status {status})")
        check_parameters(template.requirements, spec.get("components"))
        return template

    def _record(
        self,
        phone_number_id: str,
        to: str | None,
        kind: str | None,
        body: Any,
        wamid: str | None,
        error_code: int | None,
        received_at: float,
    ) -> None:
        self._state.sent.append(
            SentMessage(
                phone_number_id=phone_number_id,
                to=to,
                type=kind,
                body=body,
                wamid=wamid,
                error_code=error_code,
                received_at=received_at,
            )
        )

    def _plan_statuses(
        self, number: Number, request: SendRequest, wamid: str, template: Template | None, api_major: int
    ) -> list[dict[str, Any]]:
        """All status objects for one message, timestamps fixed now so they stay strictly increasing."""
        flow = _FLOWS[number.status_flow]
        if not flow:
            return []
        now = self._clock.now()
        base = int(now)
        opaque = request.body.get("biz_opaque_callback_data")

        def head(name: str, offset: int) -> dict[str, Any]:
            status = {"id": wamid, "status": name, "timestamp": str(base + offset), "recipient_id": request.wa_id}
            if request.user_id:  # Meta's shape for a BSUID-only recipient: an empty recipient_id
                status |= {"recipient_id": "", "recipient_user_id": request.user_id}
            if isinstance(opaque, str):
                status["biz_opaque_callback_data"] = opaque
            return status

        if request.wa_id in self._state.undeliverable:
            return [{**head("failed", 0), "errors": [status_error(131026)]}]
        if request.type == "reaction":
            # Reactions the business sends only ever get a `sent` status.
            flow = flow[:1]
        category, pricing = self._pricing(number, request.wa_id, template, now)
        conversation: tuple[str, int] | None = None
        if api_major <= _LAST_VERSION_WITH_CONVERSATION:
            conversation = self._state.conversation(number.phone_number_id, request.wa_id, category, now)
        statuses = []
        for offset, name in enumerate(flow):
            status = head(name, offset)
            if name != "read":
                if conversation is not None:
                    status["conversation"] = _conversation(conversation, category, with_expiry=name == "sent")
                status["pricing"] = pricing
            statuses.append(status)
        if number.shuffle_statuses:
            statuses.reverse()
        return statuses

    def _pricing(self, number: Number, wa_id: str, template: Template | None, now: float) -> tuple[str, dict[str, Any]]:
        """Per-message pricing (PMP): service messages are free, so are utility templates in the window."""
        if template is None:
            category, kind, billable = "service", "free_customer_service", False
        else:
            category = template.definition.category.lower()
            free = category == "utility" and self._state.window_open(number.phone_number_id, wa_id, now)
            kind, billable = ("free_customer_service", False) if free else ("regular", True)
        return category, {"billable": billable, "pricing_model": "PMP", "type": kind, "category": category}

    async def _deliver_statuses(self, number: Number, statuses: list[dict[str, Any]]) -> None:
        app = self._state.apps.get(number.app_id)
        if app is None:
            return
        for status in statuses:
            await self._dispatcher.deliver(app, status_envelope(number, status), "status")
