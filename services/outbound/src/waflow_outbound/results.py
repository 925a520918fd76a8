"""The one result of every send request: stored first, then published on outbound.results.v1.

The stored outcome is the commitment: if this instance dies before publishing it, recovery (any instance)
publishes what is stored but unmarked, under the same event id, so consumers drop a repeat. Marking results as
published is batched (one update for all published in the last moments): losing a batch to a crash only means
recovery publishes those results once more, which their event ids make harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from uuid import UUID

from prometheus_client import Counter
from pymongo.errors import PyMongoError
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
from waflow_common.metrics import BoundedLabel

from waflow_outbound.domain import MetaFailure
from waflow_outbound.lanes import Job
from waflow_outbound.repository import Document, OutboundRepository

log = logging.getLogger(__name__)

RESULTS = Counter(
    "waflow_outbound_results_total",
    "Send results by outcome and Meta's error code (`none` when Meta gave none: accepted, refused before the call)",
    ["outcome", "code"],
)
# Meta's error codes as labels: the codes seen, up to a bound (a remote API's numbers are not ours to trust).
_META_CODES = BoundedLabel(50)


def code_label(code: int | None) -> str:
    """Meta's error code as a metric label: `none` without one, `other` past the codes this process has seen."""
    return "none" if code is None else _META_CODES(str(code))


Result = SendAcceptedEvent | SendRejectedEvent


def _request_of(job: Job) -> dict[str, Any]:
    """What every result says of its request."""
    return {"request_id": job.key, "phone_number_id": job.phone_number_id, "wa_id": job.wa_id, "user_id": job.user_id}


def result_event_id(tenant_id: str, request_id: str) -> UUID:
    return derived_event_id(tenant_id, request_id, "outbound.result")


class Results:
    def __init__(
        self,
        repository: OutboundRepository,
        publisher: EventPublisher,
        clock: Clock,
        held: set[str],
        *,
        mark_every_seconds: float = 0.2,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._clock = clock
        self._held = held  # the dispatcher's: a request leaves it once its result is published
        self._mark_every = mark_every_seconds
        self._publishing: set[asyncio.Task[None]] = set()
        self._unmarked: list[str] = []
        self._marker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._marker = asyncio.create_task(self._mark_published(), name="outbound-results-marked")

    async def stop(self) -> None:
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=5.0)
        if self._marker is not None:
            self._marker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._marker
        with contextlib.suppress(PyMongoError):
            await self._flush()

    async def finish(self, job: Job, payload: SendAccepted | SendRejected) -> None:
        """Stores the request's one result, then publishes it; a request that has a result already (or is
        another instance's now) keeps the one it has."""
        common: dict[str, Any] = {
            "tenant_id": job.tenant_id,
            "payload": payload,
            "event_id": result_event_id(job.tenant_id, job.key),
            "correlation_id": job.correlation_id,
            "causation_id": UUID(job.causation_id) if job.causation_id else None,
            "clock": self._clock,
        }
        event: Result
        if isinstance(payload, SendAccepted):
            event = SendAcceptedEvent.new(**common)
        else:
            event = SendRejectedEvent.new(**common)
        outcome = payload.reason if isinstance(payload, SendRejected) else "accepted"
        stored = await self._repository.finish(job.document_id, outcome, event.model_dump(mode="json"), self._clock())
        if not stored:
            self._held.discard(job.document_id)
            return
        meta = payload.meta_error if isinstance(payload, SendRejected) else None
        RESULTS.labels(outcome, code_label(meta.code if meta is not None else None)).inc()
        # Publishing needs no lane worker: the worker goes on with the number's next request meanwhile.
        task = asyncio.create_task(self.publish(job.document_id, event))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def accept(self, job: Job, wamid: str, message_status: str | None) -> None:
        await self.finish(job, SendAccepted(**_request_of(job), wamid=wamid, message_status=message_status))

    async def reject(self, job: Job, reason: RejectReason, message: str, meta: MetaFailure | None = None) -> None:
        ref = MetaErrorRef(code=meta.code, title=meta.title, details=meta.details) if meta and meta.code else None
        await self.finish(job, SendRejected(**_request_of(job), reason=reason, message=message, meta_error=ref))

    async def publish(self, document_id: str, event: Document | Result) -> None:
        """Publishes a stored result until Kafka takes it, then has it marked published."""
        parsed: Result
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
        self._unmarked.append(document_id)

    async def _flush(self) -> None:
        batch, self._unmarked = self._unmarked, []
        if not batch:
            return
        try:
            await self._repository.mark_published(batch)
        except BaseException:
            self._unmarked.extend(batch)
            raise
        for document_id in batch:
            self._held.discard(document_id)

    async def _mark_published(self) -> None:
        while True:
            await asyncio.sleep(self._mark_every)
            try:
                await self._flush()
            except PyMongoError as exc:
                log.warning("could not mark results published; will retry", extra={"error": str(exc)[:300]})
