"""The embedded outbox: a change and its event are written to one document in one atomic update; a relay
publishes parked events and then removes them.

There are no multi-document transactions on our MongoDB-protocol server, so the event rides in the changed
document itself (`outbox` array). A process killed after publishing but before clearing publishes the same
event again later with the same event_id, which consumers drop: at-least-once, never lost, never invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from waflow_common.events.envelope import Envelope
from waflow_common.kafka import TRANSIENT_ERRORS, EventPublisher, PublishError
from waflow_common.locks import KeyedLocks

log = logging.getLogger(__name__)

RELAY_RETRYABLE: tuple[type[BaseException], ...] = (PublishError, *TRANSIENT_ERRORS)

OUTBOX_FIELD = "outbox"

Document = dict[str, Any]


def outbox_entry(event: Envelope[Any]) -> Document:
    """What to `$push` onto a document's outbox in the same update that makes the change."""
    return {
        "event_id": str(event.event_id),
        "topic": type(event).topic,
        "key": event.key(),
        "headers": event.headers(),
        "value": event.to_json().decode(),
    }


class OutboxRelay:
    """Publishes events parked in documents' outboxes, oldest notification first, then removes exactly those.

    Writers call `notify(collection, _id)` after parking an event, so the relay reads one document by `_id`
    instead of searching: on FerretDB v1 a query on `outbox.0` reads the whole collection, and `$pull` with a
    condition matches nothing (hence `$pullAll` of the entries as read). `scan()` at start and every
    `rescan_seconds` finds what a process that died between a change and its publication left parked. The
    document's lock (shared with its writers) keeps a concurrent change from being overwritten by the clear.
    """

    def __init__(
        self,
        collections: dict[str, AsyncCollection[Document]],
        publisher: EventPublisher,
        locks: KeyedLocks,
        *,
        retry_seconds: float = 1.0,
        rescan_seconds: float = 300.0,
    ) -> None:
        self._collections = collections
        self._publisher = publisher
        self._locks = locks
        self._retry = retry_seconds
        self._rescan = rescan_seconds
        self._pending: dict[tuple[str, str], None] = {}  # insertion-ordered set: oldest first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self, collection: str, doc_id: str) -> None:
        """A document just parked an event: publish it now rather than at the next scan."""
        self._pending[(collection, doc_id)] = None
        self._wake.set()

    async def relay_document(self, collection: str, doc_id: str) -> int:
        coll = self._collections[collection]
        async with self._locks.hold(f"{collection}:{doc_id}"):
            doc = await coll.find_one({"_id": doc_id}, {OUTBOX_FIELD: 1})
            entries: list[Document] = (doc or {}).get(OUTBOX_FIELD) or []
            for entry in entries:
                await self._publisher.publish_raw(
                    entry["topic"], entry["value"].encode(), key=entry["key"].encode(), headers=entry["headers"]
                )
            if entries:
                await coll.update_one({"_id": doc_id}, {"$pullAll": {OUTBOX_FIELD: entries}})
        return len(entries)

    async def scan(self) -> int:
        """Queues every document that still has parked events (after a restart, or as a safety net)."""
        found = 0
        for name, coll in self._collections.items():
            async for doc in coll.find({f"{OUTBOX_FIELD}.0": {"$exists": True}}, {"_id": 1}):
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
        loop = asyncio.get_running_loop()
        next_scan = 0.0
        while True:
            try:
                if loop.time() >= next_scan:
                    await self.scan()
                    next_scan = loop.time() + self._rescan
                self._wake.clear()
                await self.drain()
            except RELAY_RETRYABLE as exc:
                log.warning("outbox relay could not publish; will retry", extra={"error": repr(exc)})
                await asyncio.sleep(self._retry)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._retry)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
