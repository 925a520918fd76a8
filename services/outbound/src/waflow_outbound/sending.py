"""Sending: the checks before any call, the paced call itself, retries, and the result of every request."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from prometheus_client import Counter, Histogram
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.events.outbound import (
    MetaErrorRef,
    RejectReason,
    SendAccepted,
    SendAcceptedEvent,
    SendRejected,
    SendRejectedEvent,
)
from waflow_common.kafka import EventPublisher, PublishError
from waflow_common.tenants import TenantRegistry

from waflow_outbound.catalog import TemplateCatalog
from waflow_outbound.domain import (
    Call,
    CallKind,
    Cleared,
    MetaFailure,
    NumberPace,
    backoff_seconds,
    clear,
    window_open,
)
from waflow_outbound.domain_templates import TemplateParamsError, bind, meta_components
from waflow_outbound.lanes import Job, Lane, LaneSettings
from waflow_outbound.repository import Document, OutboundRepository, Recovered
from waflow_outbound.whatsapp import Accepted, WhatsAppClient

log = logging.getLogger(__name__)

RESULTS = Counter("waflow_outbound_results_total", "Send results by outcome", ["outcome"])
CALLS = Counter("waflow_outbound_calls_total", "Calls to WhatsApp by answer", ["answer"])
LATE_STARTS = Counter("waflow_outbound_held_starts_total", "Calls held back by the one-second cap")
LATENCY = Histogram("waflow_outbound_call_seconds", "Duration of one /messages call")
READS = Counter("waflow_outbound_read_receipts_total", "Read receipts finished: accepted, or why not", ["outcome"])
REFUSED = Counter(
    "waflow_outbound_refused_total",
    "Calls stopped before WhatsApp (the gate, templates), by kind and reason",
    ["kind", "reason"],
)


@dataclass(frozen=True)
class SendingSettings:
    retry_base_seconds: float = 0.5
    retry_cap_seconds: float = 30.0
    retry_max_seconds: float = 300.0  # from the request's arrival; then gave_up
    window_grace_seconds: float = 2.0
    call_lead_seconds: float = 0.05


class Rejection(Exception):
    def __init__(self, reason: RejectReason, message: str, meta: MetaFailure | None = None) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
        self.message = message
        self.meta = meta


REFUSALS: dict[RejectReason, str] = {
    "blacklisted": "the contact is blacklisted (or deleted): it is never messaged",
    "window_closed": "free-form messages need an open 24-hour window; send a template",
}


def call_kind(job: Job) -> CallKind:
    if job.kind == "read":
        return "read"
    assert job.message is not None
    kind: CallKind = "template" if job.message["type"] == "template" else "text"
    return kind


class WaitForWindow(Exception):
    """The window looks closed, but the customer's message may still be on its way to our projection."""


def result_event_id(tenant_id: str, request_id: str) -> UUID:
    return derived_event_id(tenant_id, request_id, "outbound.result")


class Dispatcher:
    def __init__(
        self,
        *,
        repository: OutboundRepository,
        registry: TenantRegistry,
        catalog: TemplateCatalog,
        whatsapp: WhatsAppClient,
        publisher: EventPublisher,
        clock: Clock,
        settings: SendingSettings,
        lane_settings: LaneSettings,
        rng: random.Random | None = None,
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._catalog = catalog
        self._whatsapp = whatsapp
        self._publisher = publisher
        self._clock = clock
        self._settings = settings
        self._lane_settings = lane_settings
        self._rng = rng or random.Random()
        self.lanes: dict[str, Lane] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        self._record_latency = 0.0
        self._lead = settings.call_lead_seconds

    # --- lanes ---------------------------------------------------------------------------------------------
    def _rate(self, phone_number_id: str) -> int:
        tenant = self._registry.tenant_for_number(phone_number_id)
        if tenant is None:
            return 80
        return next(n.rate_per_second for n in tenant.record.phone_numbers if n.phone_number_id == phone_number_id)

    def lane(self, phone_number_id: str) -> Lane:
        lane = self.lanes.get(phone_number_id)
        if lane is None:
            pace = NumberPace(self._rate(phone_number_id), margin=self._lane_settings.margin_seconds)
            lane = self.lanes[phone_number_id] = Lane(phone_number_id, pace, self._lane_settings, self._run)
            lane.start()
        return lane

    def tenants_changed(self) -> None:
        for phone_number_id, lane in self.lanes.items():
            lane.set_rate(self._rate(phone_number_id))

    def submit(self, job: Job) -> None:
        self.lane(job.phone_number_id).submit(job)

    async def stop(self) -> None:
        for lane in self.lanes.values():
            await lane.stop()
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=5.0)

    # --- results -------------------------------------------------------------------------------------------
    async def finish(self, job: Job, payload: SendAccepted | SendRejected) -> None:
        """Stores the request's one result, then publishes it (a restart publishes what was stored only)."""
        event: SendAcceptedEvent | SendRejectedEvent
        common: dict[str, Any] = {
            "tenant_id": job.tenant_id,
            "payload": payload,
            "event_id": result_event_id(job.tenant_id, job.key),
            "correlation_id": job.correlation_id,
            "causation_id": UUID(job.causation_id) if job.causation_id else None,
            "clock": self._clock,
        }
        if isinstance(payload, SendAccepted):
            event = SendAcceptedEvent.new(**common)
        else:
            event = SendRejectedEvent.new(**common)
        stored = await self._repository.record_outcome(
            job.tenant_id, job.key, event.model_dump(mode="json"), self._clock()
        )
        if not stored:
            return
        RESULTS.labels(payload.reason if isinstance(payload, SendRejected) else "accepted").inc()
        # The stored outcome is the commitment; publishing it needs no lane worker (a restart publishes what
        # is stored but unmarked, under the same event id, so consumers drop a repeat).
        task = asyncio.create_task(self.publish(job.tenant_id, job.key, event))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def publish(
        self, tenant_id: str, request_id: str, event: Document | SendAcceptedEvent | SendRejectedEvent
    ) -> None:
        parsed: SendAcceptedEvent | SendRejectedEvent
        if isinstance(event, SendAcceptedEvent | SendRejectedEvent):
            parsed = event
        elif event["event_type"] == SendAcceptedEvent.model_fields["event_type"].default:
            parsed = SendAcceptedEvent.model_validate(event)
        else:
            parsed = SendRejectedEvent.model_validate(event)
        delay = 0.2
        while True:
            try:
                await self._publisher.publish(parsed)
                break
            except PublishError as exc:
                log.warning("could not publish a result; retrying", extra={"error": str(exc)[:300]})
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        await self._repository.mark_published(tenant_id, request_id)

    async def reject(self, job: Job, reason: RejectReason, message: str, meta: MetaFailure | None = None) -> None:
        ref = MetaErrorRef(code=meta.code, title=meta.title, details=meta.details) if meta and meta.code else None
        await self.finish(
            job,
            SendRejected(
                request_id=job.key,
                phone_number_id=job.phone_number_id,
                wa_id=job.wa_id,
                user_id=job.user_id,
                reason=reason,
                message=message,
                meta_error=ref,
            ),
        )

    # --- the gate and the checks before any call ------------------------------------------------------------
    def _gate(self, call: Call) -> Cleared | RejectReason:
        """The one gate of every call to a customer: the domain's rules over this process's projections."""
        last = self._repository.last_inbound_at(call.tenant_id, call.phone_number_id, call.wa_id, call.user_id)
        return clear(
            call,
            blacklisted=self._repository.blacklisted(call.tenant_id, call.wa_id, call.user_id),
            window_open=window_open(last, self._clock()),
        )

    def _call(self, job: Job, waba_id: str) -> Call:
        """The call a job makes, or a Rejection: every rule that can be checked without calling WhatsApp.

        The gate runs first, so a blacklisted customer is told apart from a wrong template; it runs again
        just before the call (`_run`), as a blacklist or window learned while the call waited still applies.
        """
        kind = call_kind(job)
        early = Call(kind, job.tenant_id, job.phone_number_id, job.wa_id, {}, job.user_id)
        gate = self._gate(early)
        waited = (self._clock() - job.received_at).total_seconds()
        if gate == "window_closed" and waited < self._settings.window_grace_seconds:
            raise WaitForWindow  # the customer's message may still be on its way to our projection
        if not isinstance(gate, Cleared):
            raise Rejection(gate, REFUSALS[gate])
        if kind == "read":
            return replace(early, body={"messaging_product": "whatsapp", "status": "read", "message_id": job.key})
        assert job.message is not None
        if not job.wa_id and not job.user_id:
            raise Rejection("invalid", "the request names no recipient: neither a wa_id nor a user_id")
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
        if job.wa_id:
            body["to"] = job.wa_id
        else:  # a BSUID-only customer: Meta takes the business-scoped user id as `recipient`
            body["recipient"] = job.user_id
        if kind == "text":
            body |= {"type": "text", "text": {"body": job.message["body"], "preview_url": job.message["preview_url"]}}
        else:
            name, language = job.message["name"], job.message["language"]
            template = self._catalog.find(job.tenant_id, waba_id, name, language)
            if template is None or template["status"] != "APPROVED":
                state = "unknown" if template is None else template["status"]
                raise Rejection("template_unknown", f"template {name} ({language}) is not approved: {state}")
            shape = self._catalog.shape(template)
            try:
                values = bind(shape, job.message["parameters"])
            except TemplateParamsError as exc:
                raise Rejection("template_params", str(exc)) from exc
            spec: dict[str, Any] = {"name": name, "language": {"code": language}}
            if components := meta_components(shape, values):
                spec["components"] = components
            body |= {"type": "template", "template": spec}
        if job.reply_to:
            body["context"] = {"message_id": job.reply_to}
        # Meta echoes it on every status: lets anyone reconcile a message with the request that sent it.
        body["biz_opaque_callback_data"] = job.key
        return replace(early, body=body)

    async def _refuse(self, job: Job, rejection: Rejection) -> None:
        REFUSED.labels(call_kind(job), rejection.reason).inc()
        if job.kind == "read":
            await self._read_done(job, rejection.reason)
        else:
            await self.reject(job, rejection.reason, rejection.message, rejection.meta)

    async def _read_done(self, job: Job, outcome: str) -> None:
        READS.labels(outcome).inc()
        await self._repository.read_done(f"{job.tenant_id}:read:{job.key}", job.tenant_id, outcome)

    # --- one job -------------------------------------------------------------------------------------------
    async def _run(self, lane: Lane, job: Job) -> Job | None:
        tenant = self._registry.tenant(job.tenant_id)
        number = (
            next((n for n in tenant.record.phone_numbers if n.phone_number_id == job.phone_number_id), None)
            if tenant is not None
            else None
        )
        if tenant is None or number is None:
            if job.kind == "send":
                await self.reject(job, "invalid", "the tenant has no such phone number")
            else:
                await self._read_done(job, "invalid")
            return None
        try:
            call = self._call(job, number.waba_id)
        except WaitForWindow:
            if job.window_grace_used:
                await self._refuse(job, Rejection("window_closed", REFUSALS["window_closed"]))
                return None
            job.window_grace_used = True
            job.not_before = lane.now() + self._settings.window_grace_seconds
            return job
        except Rejection as exc:
            await self._refuse(job, exc)
            return None
        await self._wait_for_slot(lane, job)
        cleared = self._gate(call)
        if not isinstance(cleared, Cleared):
            await self._refuse(job, Rejection(cleared, REFUSALS[cleared]))
            return None
        with LATENCY.time():
            answer = await self._whatsapp.post_message(cleared, tenant.access_token)
        if isinstance(answer, Accepted):
            CALLS.labels("accepted").inc()
            lane.pace.succeeded()
            await self._accepted(job, answer)
            return None
        CALLS.labels(str(answer.code or answer.http_status or "transport")).inc()
        return await self._failed(lane, job, answer)

    async def _wait_for_slot(self, lane: Lane, job: Job) -> None:
        """Waits for this number's next slot, recording the attempt durably just before the call starts."""
        slot = lane.pace.reserve(lane.now())
        await asyncio.sleep(max(0.0, slot - self._lead - lane.now()))
        if job.kind == "send":  # marking read twice is harmless: no record needed
            # From here on a crash cannot tell whether WhatsApp got the call; see `recover`.
            began = lane.now()
            await self._repository.record_call(job.tenant_id, job.key, job.attempts, self._clock())
            self._note_record_latency(lane.now() - began)
        await asyncio.sleep(max(0.0, slot - lane.now()))
        while (start := lane.pace.start_at(lane.now())) > lane.now():
            LATE_STARTS.inc()
            await asyncio.sleep(start - lane.now())
        # No await between the check and `started`: no other call of this number can slip in between.
        lane.pace.started(lane.now())
        if job.kind == "send":
            lane.recipient(job.customer).take(lane.now())

    def _note_record_latency(self, seconds: float) -> None:
        """Records start ahead of the slot by about twice their recent latency: too late and the call starts
        after its slot; too early and more requests would be `outcome_unknown` after a crash."""
        self._record_latency = 0.9 * self._record_latency + 0.1 * seconds
        self._lead = min(1.0, max(self._settings.call_lead_seconds, 2 * self._record_latency))

    async def _accepted(self, job: Job, answer: Accepted) -> None:
        if job.kind == "read":
            await self._read_done(job, "accepted")
            return
        await self.finish(
            job,
            SendAccepted(
                request_id=job.key,
                phone_number_id=job.phone_number_id,
                wa_id=job.wa_id,
                user_id=job.user_id,
                wamid=answer.wamid,
                message_status=answer.message_status,
            ),
        )

    async def _failed(self, lane: Lane, job: Job, failure: MetaFailure) -> Job | None:
        handling = failure.handling
        if handling == "reject":
            if job.kind == "read":
                log.warning("WhatsApp refused a read receipt", extra={"code": failure.code})
                await self._read_done(job, failure.reason)
                return None
            message = failure.title or f"WhatsApp refused the message ({failure.code})"
            await self.reject(job, failure.reason, message, failure)
            return None
        now = lane.now()
        delay = backoff_seconds(
            job.attempts, base=self._settings.retry_base_seconds, cap=self._settings.retry_cap_seconds, rng=self._rng
        )
        if handling == "slow_number":
            lane.pace.slow_down(now, delay)
        elif handling == "slow_recipient":
            pace = lane.recipient(job.customer)
            pace.refused(now)
            delay = max(delay, pace.blocked_until - now)
        waited = (self._clock() - job.received_at).total_seconds()
        if waited + delay > self._settings.retry_max_seconds:
            if job.kind == "read":
                await self._read_done(job, "gave_up")
                return None
            await self.reject(job, "gave_up", f"WhatsApp kept failing for {waited:.0f}s: {failure.title}", failure)
            return None
        if job.kind == "send":
            # Meta answered, so this attempt certainly did not send: a restart may try again.
            await self._repository.record_retry(job.tenant_id, job.key, job.attempts, failure.code)
        job.attempts += 1
        job.not_before = now + delay
        return job

    # --- restart -------------------------------------------------------------------------------------------
    async def recover(self, found: Recovered) -> None:
        """Picks up where a stopped (or killed) process left off.

        A request whose last attempt was recorded as started but has no answer may or may not have reached
        WhatsApp: the process died between "calling" and the answer. `/messages` has no idempotency key, so
        sending again could message the customer twice, which an agent cannot take back, while reporting
        `outcome_unknown` lets the conversation show it and an agent decide (the message's status webhook
        will still arrive if it was sent, carrying the request id in biz_opaque_callback_data).
        """
        for document in found.unpublished:
            await self.publish(document["tenant_id"], document["_id"].split(":", 1)[1], document["event"])
        for request, _ in found.cut_off:
            await self.reject(
                job_of(request, 0),
                "outcome_unknown",
                "outbound stopped during the call to WhatsApp; the message may or may not have been sent",
            )
        for request, attempts in found.pending:
            self.submit(job_of(request, attempts))
        for read in found.reads:
            self.submit(read_job_of(read))


def request_document(
    *,
    tenant_id: str,
    request_id: str,
    phone_number_id: str,
    wa_id: str,
    message: dict[str, Any],
    user_id: str | None = None,
    reply_to: str | None,
    received_at: datetime,
    correlation_id: str,
    causation_id: str | None,
) -> Document:
    return {
        "_id": f"{tenant_id}:{request_id}",
        "tenant_id": tenant_id,
        "request_id": request_id,
        "phone_number_id": phone_number_id,
        "wa_id": wa_id,
        "user_id": user_id,
        "message": message,
        "reply_to": reply_to,
        "received_at": received_at,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
    }


def job_of(request: Document, attempts: int) -> Job:
    return Job(
        kind="send",
        tenant_id=request["tenant_id"],
        key=request["request_id"],
        phone_number_id=request["phone_number_id"],
        wa_id=request["wa_id"],
        user_id=request.get("user_id"),
        received_at=request["received_at"],
        correlation_id=request["correlation_id"],
        causation_id=request.get("causation_id"),
        message=request["message"],
        reply_to=request.get("reply_to"),
        attempts=attempts,
    )


def read_job_of(read: Document) -> Job:
    return Job(
        kind="read",
        tenant_id=read["tenant_id"],
        key=read["wamid"],
        phone_number_id=read["phone_number_id"],
        wa_id=read["wa_id"],
        user_id=read.get("user_id"),
        received_at=read["received_at"],
        correlation_id=read["correlation_id"],
    )
