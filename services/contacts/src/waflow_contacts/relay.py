"""Publishes the contact.changed events parked in contact documents, then clears them.

waflow_common.outbox.OutboxRelay finds parked events with `{"outbox.0": {"$exists": true}}`; on FerretDB v1
that reads the whole contacts collection on every poll (about 8 s at 110k contacts). This relay is the same
protocol with a pointer: `repository.save` records the contact's key in `outbox_pending` before the change,
so the relay reads only contacts that have something to publish, by `_id`. Clearing happens under the
contact's write lock because FerretDB's `$pull` rewrites the whole document it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from waflow_common.kafka import EventPublisher
from waflow_common.locks import KeyedLocks
from waflow_common.outbox import RELAY_RETRYABLE

from waflow_contacts.repository import ContactRepository

log = logging.getLogger(__name__)


class ContactOutboxRelay:
    def __init__(
        self,
        repository: ContactRepository,
        publisher: EventPublisher,
        locks: KeyedLocks,
        *,
        sweep_seconds: float = 1.0,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._locks = locks
        self._sweep = sweep_seconds
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def notify(self, key: str) -> None:
        """A contact just parked an event: publish it now rather than at the next sweep."""
        self._queue.put_nowait(key)

    async def relay(self, key: str) -> int:
        async with self._locks.hold(key):
            entries = await self._repository.parked_events(key)
            for entry in entries:
                await self._publisher.publish_raw(
                    entry["topic"], entry["value"].encode(), key=entry["key"].encode(), headers=entry["headers"]
                )
            await self._repository.clear_parked(key, entries)
        return len(entries)

    async def sweep(self) -> int:
        """Everything still marked pending: after a restart, or after Kafka was unreachable."""
        published = 0
        for key in await self._repository.pending_keys():
            published += await self.relay(key)
        return published

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while True:
            try:
                if loop.time() >= next_sweep:
                    await self.sweep()
                    next_sweep = loop.time() + self._sweep
                with contextlib.suppress(TimeoutError):
                    key = await asyncio.wait_for(self._queue.get(), timeout=self._sweep)
                    await self.relay(key)
            except RELAY_RETRYABLE as exc:
                log.warning("contact outbox relay could not publish; will retry", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                next_sweep = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="contacts-outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
