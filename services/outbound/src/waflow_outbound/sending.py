"""Sending: the checks before any call, the paced call itself and its retries; results are `results`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from prometheus_client import Counter, Histogram
from pymongo.errors import ConnectionFailure, PyMongoError
from waflow_common.events.envelope import Clock
from waflow_common.events.outbound import (
    RejectReason,
)
from waflow_common.kafka import EventPublisher
from waflow_common.tenants import TenantRegistry

from waflow_outbound.calls import REFUSALS, Rejection, WaitForWindow, call_kind, message_body
from waflow_outbound.catalog import TemplateCatalog
from waflow_outbound.domain import (
    Call,
    Cleared,
    MetaFailure,
    backoff_seconds,
    clear,
    window_open,
)
from waflow_outbound.lanes import Job, Lane, LaneSettings, job_of
from waflow_outbound.repository import Document, OutboundRepository
from waflow_outbound.repository.pacing import Buckets
from waflow_outbound.results import Results, code_label
from waflow_outbound.whatsapp import Accepted, WhatsAppClient

log = logging.getLogger(__name__)

T = TypeVar("T")

CALLS = Counter("waflow_outbound_calls_total", "Calls to WhatsApp by answer", ["answer"])
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
    gate_kept_seconds: float = 0.5  # a caller kept waiting longer by the number's bucket passes the gate again
    recovery_seconds: float = 2.0  # how often each instance looks for requests whose claim expired
    slow_number_seconds: float = 5.0  # half pace after a repeated 130429 (domain.after_rate_limit)


class Dispatcher:
    def __init__(
        self,
        *,
        repository: OutboundRepository,
        buckets: Buckets,
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
        self._buckets = buckets
        self._registry = registry
        self._catalog = catalog
        self._whatsapp = whatsapp
        self._publisher = publisher
        self._clock = clock
        self._settings = settings
        self._lane_settings = lane_settings
        self._rng = rng or random.Random()
        self.lanes: dict[str, Lane] = {}
        # The requests this instance has claimed and works on: their claims are renewed while they are here.
        # Losing this set (a crash) loses nothing: the claims expire and any instance's recovery takes them.
        self.held: set[str] = set()
        self.results = Results(repository, publisher, clock, self.held)
        self._tasks: list[asyncio.Task[None]] = []

    # --- lanes ---------------------------------------------------------------------------------------------
    def _rate(self, phone_number_id: str) -> int:
        tenant = self._registry.tenant_for_number(phone_number_id)
        if tenant is None:
            return 80
        return next(n.rate_per_second for n in tenant.record.phone_numbers if n.phone_number_id == phone_number_id)

    def lane(self, phone_number_id: str) -> Lane:
        lane = self.lanes.get(phone_number_id)
        if lane is None:
            lane = Lane(phone_number_id, self._rate(phone_number_id), self._lane_settings, self._run)
            self.lanes[phone_number_id] = lane
            lane.start()
        return lane

    def tenants_changed(self) -> None:
        for phone_number_id, lane in self.lanes.items():
            lane.set_rate(self._rate(phone_number_id))

    def submit(self, job: Job) -> None:
        self.held.add(job.document_id)
        self.lane(job.phone_number_id).submit(job)

    def start(self) -> None:
        self.results.start()
        self._tasks = [
            asyncio.create_task(self._renew_claims(), name="outbound-claims"),
            asyncio.create_task(self._recover(), name="outbound-recovery"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for lane in self.lanes.values():
            await lane.stop()
        await self.results.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def release(self, job: Job) -> None:
        """This instance is done with the request (finished, or another instance owns it now)."""
        self.held.discard(job.document_id)

    # --- the gate and the checks before any call ------------------------------------------------------------
    async def _gate(self, call: Call) -> Cleared | RejectReason:
        """The one gate of every call to a customer: the domain's rules over the window and blacklist as the
        database holds them now, whichever instance consumed the events that set them."""
        last, blacklisted = await asyncio.gather(
            self._repository.last_inbound_at(call.tenant_id, call.phone_number_id, call.wa_id, call.user_id),
            self._repository.blacklisted(call.tenant_id, call.wa_id, call.user_id),
        )
        return clear(call, blacklisted=blacklisted, window_open=window_open(last, self._clock()))

    async def _call(self, job: Job, waba_id: str) -> Call:
        """The call a job makes, or a Rejection: every rule that can be checked without calling WhatsApp.

        The gate runs first, so a blacklisted customer is told apart from a wrong template; it runs again
        just before the call (`_run`), as a blacklist or window learned while the call waited still applies.
        """
        kind = call_kind(job)
        early = Call(kind, job.tenant_id, job.phone_number_id, job.wa_id, {}, job.user_id)
        gate = await self._gate(early)
        waited = (self._clock() - job.received_at).total_seconds()
        if gate == "window_closed" and waited < self._settings.window_grace_seconds:
            raise WaitForWindow  # the customer's message may still be on its way to us
        if not isinstance(gate, Cleared):
            raise Rejection(gate, REFUSALS[gate])
        if kind == "read":
            return replace(early, body={"messaging_product": "whatsapp", "status": "read", "message_id": job.key})
        return replace(early, body=await message_body(job, self._catalog, waba_id))

    async def _refuse(self, job: Job, rejection: Rejection) -> None:
        REFUSED.labels(call_kind(job), rejection.reason).inc()
        if job.kind == "read":
            await self._read_done(job, rejection.reason)
        else:
            await self.results.reject(job, rejection.reason, rejection.message, rejection.meta)

    async def _read_done(self, job: Job, outcome: str) -> None:
        READS.labels(outcome).inc()
        await self._repository.finish(job.document_id, outcome, None, self._clock())
        self.release(job)

    # --- one job -------------------------------------------------------------------------------------------
    async def _run(self, lane: Lane, job: Job) -> Job | None:
        try:
            return await self._attempt(lane, job)
        except asyncio.CancelledError:
            raise
        except ConnectionFailure as exc:
            # The database is unreachable and WhatsApp was not called (after the call, `_stored` waits for the
            # database instead): the job stays here, claimed, and tries again. Dropping it would leave a request
            # recorded as calling for recovery, which must then report `outcome_unknown` for a call never made.
            log.warning("database unreachable before a call; trying again", extra={"error": str(exc)[:300]})
            job.not_before = lane.now() + 1.0
            return job
        except Exception:
            # Let its claim expire: recovery (here or on another instance) takes the request up again.
            self.release(job)
            raise

    async def _attempt(self, lane: Lane, job: Job) -> Job | None:
        tenant = self._registry.tenant(job.tenant_id)
        number = (
            next((n for n in tenant.record.phone_numbers if n.phone_number_id == job.phone_number_id), None)
            if tenant is not None
            else None
        )
        if tenant is None or number is None:
            if job.kind == "send":
                await self.results.reject(job, "invalid", "the tenant has no such phone number")
            else:
                await self._read_done(job, "invalid")
            return None
        try:
            call = await self._call(job, number.waba_id)
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
        if job.kind == "send":
            if job.customer_slot is None:
                job.customer_slot = await self._buckets.customer_slot(
                    f"{job.phone_number_id}:{job.customer}",
                    self._lane_settings.recipient_interval_seconds,
                    self._lane_settings.recipient_burst,
                )
            if job.customer_slot - time.time() > 0.5:  # free the worker while the customer's pace holds it
                job.not_before = lane.now() + job.customer_slot - time.time()
                return job
            await asyncio.sleep(max(0.0, job.customer_slot - time.time()))
        cleared = await self._paced(lane, job, call)
        if cleared is None:
            self.release(job)  # another instance claimed it meanwhile: it is theirs now
            return None
        if not isinstance(cleared, Cleared):
            await self._refuse(job, Rejection(cleared, REFUSALS[cleared]))
            return None
        with LATENCY.time():
            answer = await self._whatsapp.post_message(cleared, tenant.access_token)
        if isinstance(answer, Accepted):
            CALLS.labels("accepted").inc()
            await self._stored(lambda: self._accepted(job, answer))
            return None
        CALLS.labels(code_label(answer.code) if answer.code else str(answer.http_status or "transport")).inc()
        return await self._stored(lambda: self._failed(lane, job, answer))

    @staticmethod
    async def _stored(step: Callable[[], Awaitable[T]]) -> T:
        """Runs a step that stores what WhatsApp answered, again and again while the database is unreachable:
        the answer exists only here, and going back to the top would call WhatsApp a second time."""
        delay = 0.5
        while True:
            try:
                return await step()
            except ConnectionFailure as exc:
                log.warning(
                    "database unreachable after a call; storing its answer again", extra={"error": str(exc)[:300]}
                )
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _paced(self, lane: Lane, job: Job, call: Call) -> Cleared | RejectReason | None:
        """Returns at the call's start in the number's shared bucket, with the attempt recorded and the gate
        passed just before (None: the request is no longer this instance's to send).

        Every instance takes its starts from the same bucket, so the number's rate holds whatever the number of
        instances. The lane lets a few callers at a time record and pass the gate, then ask the bucket."""
        async with lane.ahead:
            recorded = job.kind != "send"  # marking read twice is harmless: no record needed
            while True:
                gate = await self._record_and_gate(job, call, recorded)
                recorded = True
                if gate is None or not isinstance(gate, Cleared):
                    return gate
                if await lane.take_start(
                    self._buckets, gated_at=time.time(), gate_kept=self._settings.gate_kept_seconds
                ):
                    return gate

    async def _record_and_gate(self, job: Job, call: Call, recorded: bool) -> Cleared | RejectReason | None:
        """The gate, and the attempt recorded as calling at the same time (None: this instance may not call).
        From here on a crash cannot tell whether WhatsApp got the call; see `take_over`. A job that was
        recorded before the database went away checks that the request is still its own."""
        if recorded:
            return await self._gate(call)
        began, gate = await asyncio.gather(
            self._repository.begin_attempt(job.document_id, job.attempts, self._clock(), again=job.calling),
            self._gate(call),
            return_exceptions=True,
        )
        if began is True:
            job.calling = True
        for outcome in (began, gate):
            if isinstance(outcome, BaseException):
                raise outcome
        return gate if began is True and not isinstance(gate, BaseException) else None

    async def _accepted(self, job: Job, answer: Accepted) -> None:
        if job.kind == "read":
            await self._read_done(job, "accepted")
            return
        await self.results.accept(job, answer.wamid, answer.message_status)

    async def _failed(self, lane: Lane, job: Job, failure: MetaFailure) -> Job | None:
        handling = failure.handling
        if handling == "reject":
            if job.kind == "read":
                log.warning("WhatsApp refused a read receipt", extra={"code": failure.code})
                await self._read_done(job, failure.reason)
                return None
            message = failure.title or f"WhatsApp refused the message ({failure.code})"
            await self.results.reject(job, failure.reason, message, failure)
            return None
        now = lane.now()
        delay = backoff_seconds(
            job.attempts, base=self._settings.retry_base_seconds, cap=self._settings.retry_cap_seconds, rng=self._rng
        )
        if handling == "slow_number":  # for every instance: the pause and the slower pace are in the bucket
            await self._buckets.slow_number(job.phone_number_id, delay, self._settings.slow_number_seconds)
        elif handling == "slow_recipient":
            blocked_until = await self._buckets.customer_refused(f"{job.phone_number_id}:{job.customer}")
            delay = max(delay, blocked_until - time.time())
        waited = (self._clock() - job.received_at).total_seconds()
        if waited + delay > self._settings.retry_max_seconds:
            if job.kind == "read":
                await self._read_done(job, "gave_up")
                return None
            await self.results.reject(
                job, "gave_up", f"WhatsApp kept failing for {waited:.0f}s: {failure.title}", failure
            )
            return None
        # Meta answered, so this attempt certainly did not send: the next one may (here or after a takeover).
        if job.kind == "send" and not await self._repository.retry_later(job.document_id, failure.code):
            self.release(job)
            return None
        job.calling = False
        job.attempts += 1
        job.customer_slot = None
        job.not_before = now + delay
        return job

    # --- claims and recovery -----------------------------------------------------------------------------
    async def _renew_claims(self) -> None:
        every = self._repository.claim_seconds / 4
        while True:
            await asyncio.sleep(every)
            try:
                await self._repository.renew(list(self.held), self._clock())
            except PyMongoError as exc:
                log.warning("could not renew claims", extra={"error": str(exc)[:300]})

    async def _recover(self) -> None:
        while True:
            try:
                while claimed := await self._repository.claim_expired(self._clock(), 200):
                    for document in claimed:
                        await self.take_over(document)
            except PyMongoError as exc:
                log.warning("recovery failed; will retry", extra={"error": str(exc)[:300]})
            await asyncio.sleep(self._settings.recovery_seconds)

    async def take_over(self, document: Document) -> None:
        """Goes on with a request whose owner stopped (killed, or cut off for longer than a claim).

        A request whose attempt was recorded as started but has no answer may or may not have reached
        WhatsApp: its owner died between "calling" and the answer. `/messages` has no idempotency key, so
        sending again could message the customer twice, which an agent cannot take back, while reporting
        `outcome_unknown` lets the conversation show it and an agent decide (the message's status webhook
        will still arrive if it was sent, carrying the request id in biz_opaque_callback_data, and conversation
        then shows what Meta says of it).
        """
        if document["_id"] in self.held:
            return  # its claim lapsed while the database was away, but its job is alive here and goes on
        self.held.add(document["_id"])
        if document["state"] == "done":
            await self.results.publish(document["_id"], document["event"])
        elif document.get("kind") == "read":
            self.submit(job_of(document))
        elif document["state"] == "calling":
            await self.results.reject(
                job_of(document),
                "outcome_unknown",
                "outbound stopped during the call to WhatsApp; the message may or may not have been sent",
            )
        else:
            self.submit(job_of(document))
