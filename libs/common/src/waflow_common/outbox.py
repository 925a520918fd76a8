"""The embedded outbox: a change and its event are written to one document in one atomic update; a relay
publishes parked events and then removes them.

The event rides in the changed document itself (`outbox` array), so a change and its event need no
multi-document transaction (it works the same on any MongoDB-protocol server). Every entry carries `parked_at`.

Any number of instances relay: each publishes the events its own writes parked (`notify`), and removes exactly
those entries by event_id (`$pull`), which cannot touch a concurrent change or an entry parked since. A process
killed between a change and its publication leaves the entry parked; `scan`, run by one instance at a time under
a lease, publishes entries older than `orphan_seconds`. A process killed after publishing but before clearing
publishes the same event again later with the same event_id, which consumers drop: at-least-once, never lost,
never invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from waflow_common.events.envelope import Envelope
from waflow_common.kafka import TRANSIENT_ERRORS, EventPublisher, PublishError
from waflow_common.leases import Leases, run_leased

log = logging.getLogger(__name__)

RELAY_RETRYABLE: tuple[type[BaseException], ...] = (PublishError, *TRANSIENT_ERRORS)

OUTBOX_FIELD = "outbox"
PARKED_AT = f"{OUTBOX_FIELD}.parked_at"

# The rescan's index: multikey over the parked entries only (a document with an empty outbox has no key).
OUTBOX_INDEX = IndexModel([(PARKED_AT, 1)], name="outbox_parked_at", sparse=True)

Document = dict[str, Any]


def outbox_entry(event: Envelope[Any]) -> Document:
    """What to `$push` onto a document's outbox in the same update that makes the change."""
    return {
        "event_id": str(event.event_id),
        "topic": type(event).topic,
        "key": event.key(),
        "headers": event.headers(),
        "value": event.to_json().decode(),
        "parked_at": datetime.now(UTC),
    }


class OutboxRelay:
    """Publishes events parked in documents' outboxes, oldest notification first, then removes exactly those.

    Writers call `notify(collection, _id)` after parking an event, so the relay reads one document by `_id`
    instead of searching. With `leases`, the orphan scan runs on one instance at a time; without, on this one.
    """

    def __init__(
        self,
        collections: dict[str, AsyncCollection[Document]],
        publisher: EventPublisher,
        leases: Leases | None = None,
        *,
        name: str = "outbox",
        retry_seconds: float = 1.0,
        rescan_seconds: float = 30.0,
        orphan_seconds: float = 30.0,
    ) -> None:
        self._collections = collections
        self._publisher = publisher
        self._leases = leases
        self._name = name
        self._retry = retry_seconds
        self._rescan = rescan_seconds
        self._orphan = orphan_seconds
        self._pending: dict[tuple[str, str], None] = {}  # insertion-ordered set: oldest first
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def notify(self, collection: str, doc_id: str) -> None:
        """A document just parked an event: publish it now rather than at the next scan."""
        self._pending[(collection, doc_id)] = None
        self._wake.set()

    async def relay_document(self, collection: str, doc_id: str) -> int:
        coll = self._collections[collection]
        doc = await coll.find_one({"_id": doc_id}, {OUTBOX_FIELD: 1})
        entries: list[Document] = (doc or {}).get(OUTBOX_FIELD) or []
        for entry in entries:
            await self._publisher.publish_raw(
                entry["topic"], entry["value"].encode(), key=entry["key"].encode(), headers=entry["headers"]
            )
        if entries:
            published = [entry["event_id"] for entry in entries]
            await coll.update_one({"_id": doc_id}, {"$pull": {OUTBOX_FIELD: {"event_id": {"$in": published}}}})
        return len(entries)

    async def scan(self, *, older_than: float | None = None) -> int:
        """Queues every document with an entry parked more than `older_than` seconds ago (default: the orphan
        age): what a process that died between a change and its publication left behind."""
        age = self._orphan if older_than is None else older_than
        cutoff = datetime.now(UTC) - timedelta(seconds=age)
        found = 0
        for name, coll in self._collections.items():
            async for doc in coll.find({PARKED_AT: {"$lte": cutoff}}, {"_id": 1}):
                self.notify(name, doc["_id"])
                found += 1
        return found

    async def drain(self) -> int:
        published = 0
        while self._pending:
            key = next(iter(self._pending))
            # Taken off first: a notification arriving while it is relayed queues it again.
            del self._pending[key]
            try:
                published += await self.relay_document(*key)
            except BaseException:
                self._pending[key] = None
                raise
        return published

    async def run(self) -> None:
        while True:
            try:
                self._wake.clear()
                await self.drain()
            except RELAY_RETRYABLE as exc:
                log.warning("outbox relay could not publish; will retry", extra={"error": repr(exc)})
                await asyncio.sleep(self._retry)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._retry)

    async def _scan_and_drain(self) -> None:
        await self.scan()
        await self.drain()

    async def run_scans(self) -> None:
        if self._leases is None:
            while True:
                with contextlib.suppress(*RELAY_RETRYABLE, PyMongoError):
                    await self._scan_and_drain()
                await asyncio.sleep(self._rescan)
        await run_leased(
            self._leases,
            f"{self._name}-rescan",
            self._scan_and_drain,
            every=self._rescan,
            retryable=(*RELAY_RETRYABLE, PyMongoError),
        )

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.run(), name="outbox-relay"),
            asyncio.create_task(self.run_scans(), name="outbox-rescan"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
