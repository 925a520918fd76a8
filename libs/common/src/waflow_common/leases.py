"""Leases in the database: work that no event drives (sweeps, relays' rescans, syncs, recovery) is done by one
instance at a time, and taken over by another when its holder dies.

A lease is one document `{_id: name, owner, until}`. Acquiring is one conditional upsert: it matches only a lease
that has expired or that this owner already holds; when another owner holds a live one, the upsert collides with
its `_id` and the server answers 11000, so exactly one instance holds it at any moment (MongoDB's single-document
atomicity, checked by tests/conformance). A holder renews by acquiring again before `until`; one that is killed
simply stops renewing, and the lease is free `seconds` later. Times are the instances' clocks (UTC); a lease's
length must exceed the clock skew between instances by a wide margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

log = logging.getLogger(__name__)

LEASES_COLLECTION = "leases"


def instance_id() -> str:
    """This process, as lease owners and claims name it: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        owner: str | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._collection = collection
        self.owner = owner or instance_id()
        self._clock = clock

    async def acquire(self, name: str, seconds: float) -> bool:
        """Takes or renews the lease `name` for `seconds`; False while another owner holds it."""
        now = self._clock()
        try:
            await self._collection.find_one_and_update(
                {"_id": name, "$or": [{"until": {"$lte": now}}, {"owner": self.owner}]},
                {"$set": {"owner": self.owner, "until": now + timedelta(seconds=seconds), "renewed_at": now}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False
        return True

    async def release(self, name: str) -> None:
        """Gives the lease up at once (a clean stop), if this owner still holds it."""
        await self._collection.update_one({"_id": name, "owner": self.owner}, {"$set": {"until": self._clock()}})

    async def holder(self, name: str) -> str | None:
        doc = await self._collection.find_one({"_id": name})
        if doc is None or doc["until"] <= self._clock():
            return None
        return str(doc["owner"])


async def run_leased(
    leases: Leases,
    name: str,
    work: Callable[[], Awaitable[object]],
    *,
    every: float,
    lease_seconds: float | None = None,
    retryable: tuple[type[BaseException], ...] = (PyMongoError,),
) -> None:
    """Runs `work` every `every` seconds on whichever instance holds the lease `name`; forever, until cancelled.

    The lease lasts `lease_seconds` (default: three periods plus 10 s), so a holder that is killed mid-work is
    replaced within that time. `work` must be safe to repeat: a holder killed mid-item leaves the item to the next
    holder, which does it again (items are claimed or guarded by conditional updates in the database)."""
    seconds = lease_seconds if lease_seconds is not None else every * 3 + 10
    try:
        while True:
            try:
                if await leases.acquire(name, seconds):
                    await work()
            except retryable as exc:
                log.warning("leased work failed; will retry", extra={"lease": name, "error": repr(exc)})
            await asyncio.sleep(every)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(leases.release(name))
