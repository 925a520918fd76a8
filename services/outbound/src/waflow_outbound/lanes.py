"""Per-number lanes: each phone number has its own queue and workers in this instance, so a busy one starves no
other. Inside a lane, jobs wait per customer: one customer's messages go out one at a time and in order, while
other customers of the same number proceed in parallel.

Lanes are for throughput only. Correctness does not rest on them: a number's pace and a customer's pair rate are
buckets in the database shared by every instance, and each request is claimed in the database. A lane only
orders its own callers of the number's bucket (`ahead`, `turns`): one try asks for the starts of all who wait, so
they do not all ask it at once; losing that order (another instance, a restart) costs a refused try, never a call
above the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from prometheus_client import Counter, Histogram

from waflow_outbound.domain import number_pace
from waflow_outbound.repository import Document, read_request_id, request_key
from waflow_outbound.repository.pacing import Buckets

log = logging.getLogger(__name__)

PERMITS = Counter("waflow_outbound_permit_tries_total", "Tries at a number's bucket, by answer", ["answer"])
PERMIT_WAIT = Histogram(
    "waflow_outbound_permit_wait_seconds",
    "Time a call waited for its start from the number's bucket (pacing), by how the wait ended: `start`, or "
    "`gate_expired` (the gate passed too long ago: it runs again, then the call waits again)",
    ["outcome"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


@dataclass
class Job:
    kind: Literal["send", "read"]
    tenant_id: str
    key: str  # request_id of a send; the wamid of a read receipt
    phone_number_id: str
    wa_id: str  # empty for a BSUID-only customer
    received_at: datetime
    correlation_id: str
    causation_id: str | None = None
    message: dict[str, Any] | None = None
    reply_to: str | None = None
    attempts: int = 0
    not_before: float = 0.0  # loop time
    window_grace_used: bool = False
    user_id: str | None = None  # the customer's BSUID, when known
    customer_slot: float | None = None  # this attempt's slot in the customer's bucket (time.time())
    calling: bool = False  # this attempt is recorded as calling WhatsApp (the call itself is not made yet)

    @property
    def document_id(self) -> str:
        """The `_id` of the job's request document."""
        request_id = self.key if self.kind == "send" else read_request_id(self.key)
        return request_key(self.tenant_id, request_id)

    @property
    def customer(self) -> str:
        """Who the job is for (the BSUID, else the wa_id): its queue and pace, so BSUID-only customers, whose
        wa_id is empty, never share one."""
        return self.user_id or self.wa_id


@dataclass(frozen=True)
class LaneSettings:
    # A worker holds a job from taking its slot to its stored result (a few database round trips around the
    # call), and slots are handed out ahead, so a number needs about rate x that latency of them (and some).
    workers_per_100_per_second: int = 50
    max_workers: int = 256
    recipient_burst: int = 20
    recipient_interval_seconds: float = 6.0
    margin_seconds: float = 0.04
    # Callers with their attempt recorded and the gate passed, waiting for the number's bucket: about this many
    # seconds of the number's calls, so the bucket always has one ready, and a gate is never much older.
    ahead_seconds: float = 0.2
    # A start is handed out at most this far ahead, and one try asks for at most that many seconds of the
    # number's calls: a round trip to a busy database fits in it, so round trips never limit the rate.
    permit_lead_seconds: float = 0.1


Runner = Callable[["Lane", Job], Awaitable[Job | None]]


@dataclass
class Lane:
    phone_number_id: str
    rate: int
    settings: LaneSettings
    run_job: Runner
    _queues: dict[str, deque[Job]] = field(default_factory=dict)
    # Customers ready now wake exactly one worker each; those to wait for sit in a heap watched by one timer.
    _ready: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _delayed: list[tuple[float, int, str]] = field(default_factory=list)
    _scheduled: set[str] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)
    _timer_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _timer: asyncio.Task[None] | None = None
    # This instance's callers of the number's bucket: a few recorded and gated ahead (`ahead`); one of them at a
    # time (`turns`) asks the bucket for starts for all who wait (`waiting`), and each takes one (`granted`).
    ahead: asyncio.Semaphore = field(init=False)
    turns: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    granted: deque[tuple[float, float]] = field(default_factory=deque)  # (time.time(), as the bucket stores it)
    next_at: float = 0.0  # when the bucket said the number's next start may be (time.time())

    def __post_init__(self) -> None:
        self._size_turns()

    def _size_turns(self) -> None:
        self.ahead = asyncio.Semaphore(max(2, round(self.rate * self.settings.ahead_seconds)))

    @property
    def starts_wanted(self) -> int:
        """How many starts to ask the bucket for: one per caller waiting without one, at most `permit_lead_seconds`
        of the number's calls."""
        most = max(1, round(self.rate * self.settings.permit_lead_seconds))
        return max(1, min(most, self.waiting - len(self.granted)))

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def submit(self, job: Job) -> None:
        self._queues.setdefault(job.customer, deque()).append(job)
        self._schedule(job.customer)

    async def take_start(self, buckets: Buckets, *, gated_at: float, gate_kept: float) -> bool:
        """Waits for a call's start from the number's bucket: True at it; False when the gate passed more than
        `gate_kept` seconds before (then it must run again). The window is 1 + margin seconds, so calls that
        start up to the margin late still leave no second at WhatsApp over the rate (`number_pace`); a start
        its caller wakes too late for (or nobody took) goes back to the bucket, and the caller takes another.

        One caller at a time asks the bucket, for a start for each caller of this lane waiting (one round trip
        for several calls); each caller takes the earliest start handed out."""
        lead, margin = self.settings.permit_lead_seconds, self.settings.margin_seconds
        self.waiting += 1
        waited_from = time.perf_counter()
        outcome = ""  # how the wait ended: observed only when it ended with an answer (not an error)
        try:
            while True:
                if not self.granted:
                    async with self.turns:
                        if self.granted:
                            continue
                        wait = max(0.0, self.next_at - lead - time.time())
                        if time.time() + wait - gated_at > gate_kept:
                            outcome = "gate_expired"
                            return False
                        await asyncio.sleep(wait)
                        pace = number_pace(self.rate, margin)
                        grant = await buckets.number_permits(self.phone_number_id, pace, lead, self.starts_wanted)
                        self.next_at = grant.next_at
                        self.granted.extend(grant.starts)
                        if not grant.starts:
                            PERMITS.labels("refused").inc()
                    continue
                if self.granted[0][0] - gated_at > gate_kept:
                    outcome = "gate_expired"
                    return False  # the start stays for a caller gated since
                start, stored = self.granted.popleft()
                await asyncio.sleep(max(0.0, start - time.time()))
                if time.time() <= start + margin:
                    PERMITS.labels("start").inc()
                    outcome = "start"
                    return True
                PERMITS.labels("late").inc()
                await buckets.unused_start(self.phone_number_id, stored)
        finally:
            self.waiting -= 1
            if outcome:
                PERMIT_WAIT.labels(outcome).observe(time.perf_counter() - waited_from)

    def set_rate(self, rate: int) -> None:
        if rate != self.rate:
            self.rate = rate
            self._size_turns()  # callers holding the old ones release them as they go
            self._resize()

    def _schedule(self, wa_id: str) -> None:
        queue = self._queues.get(wa_id)
        if not queue or wa_id in self._busy or wa_id in self._scheduled:
            return
        now = self.now()
        head = queue[0]
        ready = max(now, head.not_before)
        self._scheduled.add(wa_id)
        if ready <= now:
            self._ready.put_nowait(wa_id)
        else:
            heapq.heappush(self._delayed, (ready, next(self._seq), wa_id))
            self._timer_wake.set()

    async def _release_due(self) -> None:
        while True:
            now = self.now()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, wa_id = heapq.heappop(self._delayed)
                self._ready.put_nowait(wa_id)
            timeout = self._delayed[0][0] - now if self._delayed else None
            self._timer_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), timeout)

    async def _next(self) -> str:
        wa_id = await self._ready.get()
        self._scheduled.discard(wa_id)
        return wa_id

    async def _work(self) -> None:
        while True:
            wa_id = await self._next()
            queue = self._queues.get(wa_id)
            if not queue:
                continue
            job = queue.popleft()
            self._busy.add(wa_id)
            again: Job | None = None
            try:
                again = await self.run_job(self, job)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The request stays as it was in the database; its claim expires and recovery takes it up.
                log.exception("a send failed unexpectedly", extra={"phone_number_id": self.phone_number_id})
            finally:
                self._busy.discard(wa_id)
            if again is not None:
                queue.appendleft(again)
            if queue:
                self._schedule(wa_id)
            else:
                self._queues.pop(wa_id, None)

    def _wanted_workers(self) -> int:
        wanted = -(-self.rate * self.settings.workers_per_100_per_second // 100)
        return max(8, min(self.settings.max_workers, wanted))

    def _resize(self) -> None:
        while len(self._workers) < self._wanted_workers():
            self._workers.append(asyncio.create_task(self._work(), name=f"lane-{self.phone_number_id}"))

    def start(self) -> None:
        self._timer = asyncio.create_task(self._release_due(), name=f"lane-timer-{self.phone_number_id}")
        self._resize()

    async def stop(self) -> None:
        if self._timer is not None:
            self._workers.append(self._timer)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()


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
        "_id": request_key(tenant_id, request_id),
        "tenant_id": tenant_id,
        "request_id": request_id,
        "kind": "send",
        "phone_number_id": phone_number_id,
        "wa_id": wa_id,
        "user_id": user_id,
        "message": message,
        "reply_to": reply_to,
        "received_at": received_at,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
    }


def read_document(
    *,
    tenant_id: str,
    wamid: str,
    phone_number_id: str,
    wa_id: str,
    user_id: str | None,
    received_at: datetime,
    correlation_id: str,
) -> Document:
    request_id = read_request_id(wamid)
    return {
        "_id": request_key(tenant_id, request_id),
        "tenant_id": tenant_id,
        "request_id": request_id,
        "kind": "read",
        "wamid": wamid,
        "phone_number_id": phone_number_id,
        "wa_id": wa_id,
        "user_id": user_id,
        "received_at": received_at,
        "correlation_id": correlation_id,
    }


def job_of(document: Document) -> Job:
    """The job of a stored request: a send (keyed by its request id) or a read receipt (keyed by the wamid)."""
    send = document.get("kind", "send") == "send"
    return Job(
        kind="send" if send else "read",
        tenant_id=document["tenant_id"],
        key=document["request_id"] if send else document["wamid"],
        phone_number_id=document["phone_number_id"],
        wa_id=document["wa_id"],
        user_id=document.get("user_id"),
        received_at=document["received_at"],
        correlation_id=document["correlation_id"],
        causation_id=document.get("causation_id") if send else None,
        message=document.get("message") if send else None,
        reply_to=document.get("reply_to") if send else None,
        attempts=document.get("attempts", 0) if send else 0,
    )
