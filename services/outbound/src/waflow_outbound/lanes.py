"""Per-number lanes: each phone number has its own queue, workers and pace, so a busy one starves no other.

Inside a lane, jobs wait per customer: one customer's messages go out one at a time and in order, at the
customer's pace, while other customers of the same number proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from waflow_outbound.domain import NumberPace, RecipientPace

log = logging.getLogger(__name__)


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

    @property
    def customer(self) -> str:
        """Who the job is for (the BSUID, else the wa_id): its queue and pace, so BSUID-only customers, whose
        wa_id is empty, never share one."""
        return self.user_id or self.wa_id


@dataclass(frozen=True)
class LaneSettings:
    # A worker holds a job from its slot to its stored, published result (a few journal and Kafka round
    # trips), so a number needs about rate x that latency of them to keep its pace.
    workers_per_100_per_second: int = 50
    max_workers: int = 256
    recipient_burst: int = 20
    recipient_interval_seconds: float = 6.0
    margin_seconds: float = 0.05


Runner = Callable[["Lane", Job], Awaitable[Job | None]]


@dataclass
class Lane:
    phone_number_id: str
    pace: NumberPace
    settings: LaneSettings
    run_job: Runner
    _queues: dict[str, deque[Job]] = field(default_factory=dict)
    _recipients: dict[str, RecipientPace] = field(default_factory=dict)
    # Customers ready now wake exactly one worker each; those to wait for sit in a heap watched by one timer.
    _ready: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _delayed: list[tuple[float, int, str]] = field(default_factory=list)
    _scheduled: set[str] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)
    _timer_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _timer: asyncio.Task[None] | None = None

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def recipient(self, wa_id: str) -> RecipientPace:
        pace = self._recipients.get(wa_id)
        if pace is None:
            pace = self._recipients[wa_id] = RecipientPace(
                self.settings.recipient_burst, self.settings.recipient_interval_seconds
            )
        return pace

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def submit(self, job: Job) -> None:
        self._queues.setdefault(job.customer, deque()).append(job)
        self._schedule(job.customer)

    def set_rate(self, rate: int) -> None:
        if rate != self.pace.rate:
            self.pace.rate = rate
            self._resize()

    def _schedule(self, wa_id: str) -> None:
        queue = self._queues.get(wa_id)
        if not queue or wa_id in self._busy or wa_id in self._scheduled:
            return
        now = self.now()
        head = queue[0]
        ready = max(now, head.not_before)
        if head.kind == "send":
            ready = max(ready, self.recipient(wa_id).ready_at(now))
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
                # The job stays recorded as it was; a restart picks it up again.
                log.exception("a send failed unexpectedly", extra={"phone_number_id": self.phone_number_id})
            finally:
                self._busy.discard(wa_id)
            if again is not None:
                queue.appendleft(again)
            if queue:
                self._schedule(wa_id)
            else:
                self._queues.pop(wa_id, None)
                if self.recipient(wa_id).idle(self.now()):
                    self._recipients.pop(wa_id, None)

    def _wanted_workers(self) -> int:
        wanted = -(-self.pace.rate * self.settings.workers_per_100_per_second // 100)
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
