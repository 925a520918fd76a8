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
    """Polls the given collections for documents with parked events and publishes them in order."""

    def __init__(
        self,
        collections: list[AsyncCollection[Document]],
        publisher: EventPublisher,
        *,
        interval_seconds: float = 0.05,
        batch: int = 200,
    ) -> None:
        self._collections = collections
        self._publisher = publisher
        self._interval = interval_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Called after a write that parked an event, so the relay does not wait for its next poll."""
        self._wake.set()

    async def relay_once(self) -> int:
        published = 0
        for collection in self._collections:
            cursor = collection.find({f"{OUTBOX_FIELD}.0": {"$exists": True}}, {OUTBOX_FIELD: 1}).limit(self._batch)
            async for doc in cursor:
                entries: list[Document] = doc[OUTBOX_FIELD]
                for entry in entries:
                    await self._publisher.publish_raw(
                        entry["topic"],
                        entry["value"].encode(),
                        key=entry["key"].encode(),
                        headers=entry["headers"],
                    )
                # $pullAll removes exactly the entries just published (FerretDB's $pull takes no conditions);
                # entries parked meanwhile stay for the next round.
                await collection.update_one({"_id": doc["_id"]}, {"$pullAll": {OUTBOX_FIELD: entries}})
                published += len(entries)
        return published

    async def run(self) -> None:
        while True:
            try:
                published = await self.relay_once()
            except RELAY_RETRYABLE as exc:
                log.warning("outbox relay could not publish; will retry", extra={"error": repr(exc)})
                published = 0
                await asyncio.sleep(1.0)
            if published == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval * 10)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
