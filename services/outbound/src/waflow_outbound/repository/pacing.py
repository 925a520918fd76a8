"""Pacing shared by every instance: a bucket per business number and per (number, customer) in MongoDB.

Each bucket is one document, changed by one atomic pipeline update per try, so instances never race; times are
epoch milliseconds of the server's clock (numbers, not dates: the server's `$$NOW` is turned into a number with
`$toLong`, as a date plus a number is refused in a pipeline).

- A number's bucket keeps the start times of its last `limit` calls (a sliding window): a try gets the earliest
  starts (as many as the instance has callers waiting) that keep at most `limit` starts in any `window` and `gap`
  between two, those close enough to wait for, else the time to try again (`waflow_outbound.domain.permits` is
  the same rule in Python, and its tests prove the rate). Only starts handed out count, and a start its caller
  did not use is given back, so a caller that comes late wastes no one's turn.
- A customer's bucket is a GCRA (`waflow_outbound.domain.gcra`): its theoretical arrival time `tat`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from waflow_outbound.domain import Pace

NUMBER_BUCKETS = "number_buckets"  # one per phone_number_id
CUSTOMER_BUCKETS = "customer_buckets"  # one per (number, customer): Meta's pair rate; expires when idle
SERVER_CLOCK = "server_clock"  # one document, read for the server's time when an instance starts

_NOW = {"$toLong": "$$NOW"}


def _ms(field: str) -> dict[str, Any]:
    return {"$ifNull": [f"${field}", 0]}


class ServerClock:
    """The offset between this host's clock and the database server's, from the round trips of the last minutes.

    A start is a time on the server's clock; waiting for it on ours needs the offset. Each answer carries the
    server's `now`; (local receipt - server now) is the offset plus that answer's one-way delay, so the smallest
    sample is the offset plus the shortest delay. Clocks drift by microseconds a minute, so the smallest over
    `horizon` seconds (kept as one minimum per `slot` seconds) stays put: a minimum over only the last few dozen
    answers rose by up to 28 ms whenever the database was busy, moving every start by as much, and WhatsApp
    counted those jittered calls as over the rate (130429; bench/outbound). If the server's clock steps back
    against ours, calls start up to that step early until the step's samples leave the horizon."""

    def __init__(self, horizon: float = 300.0, slot: float = 10.0) -> None:
        self._slot = slot
        self._slots = max(1, round(horizon / slot))
        self._minima: deque[tuple[int, float]] = deque()  # (slot number, smallest sample in it)
        self.offset = 0.0

    def note(self, server_now_ms: float, received_at: float) -> None:
        sample = received_at - server_now_ms / 1000
        slot = int(received_at // self._slot)
        if self._minima and self._minima[-1][0] == slot:
            if sample < self._minima[-1][1]:
                self._minima[-1] = (slot, sample)
        else:
            self._minima.append((slot, sample))
        while self._minima[0][0] <= slot - self._slots:
            self._minima.popleft()
        self.offset = min(minimum for _, minimum in self._minima)

    def local(self, server_ms: float) -> float:
        """A server time (epoch ms) as this host's `time.time()`."""
        return server_ms / 1000 + self.offset


@dataclass(frozen=True)
class Grant:
    """What a number's bucket handed out: starts as (this host's time.time(), the value the bucket stores, for
    `unused_start`), earliest first, and when its next start may be (this host's clock)."""

    starts: list[tuple[float, float]]
    next_at: float


class Buckets:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._db = db
        self.clock = ServerClock()

    async def create_indexes(self, idle_seconds: float = 3600.0) -> None:
        await self._db[CUSTOMER_BUCKETS].create_index("used_at", expireAfterSeconds=int(idle_seconds))

    async def calibrate(self, round_trips: int = 20) -> None:
        """Learns the server's clock before the first call is paced: a few quick round trips while this instance
        is still idle, so its first starts are not placed by one slow answer (then moved when better ones come,
        which bunches calls)."""
        for _ in range(round_trips):
            document = await self._db[SERVER_CLOCK].find_one_and_update(
                {"_id": "now"}, [{"$set": {"now": _NOW}}], upsert=True, return_document=ReturnDocument.AFTER
            )
            assert document is not None
            self.clock.note(document["now"], time.time())

    async def _take(self, collection: str, key: str, pipeline: list[dict[str, Any]]) -> float:
        document = await self._db[collection].find_one_and_update(
            {"_id": key}, pipeline, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert document is not None
        self.clock.note(document["now"], time.time())
        return self.clock.local(document["slot"])

    async def number_permits(self, phone_number_id: str, pace: Pace, lead: float, count: int) -> Grant:
        """Up to `count` starts of calls, each at most `lead` seconds from now, in one round trip (the loop of
        `waflow_outbound.domain.permits`, run by the server in one atomic update), and when the next may be."""
        limit, window, gap, ahead = pace.limit, pace.window * 1000, pace.gap * 1000, lead * 1000
        slow = {"$lt": ["$now", _ms("slow_until")]}

        def free_at(starts: str) -> dict[str, Any]:
            return {
                "$max": [
                    "$now",
                    _ms("paused_until"),
                    {
                        "$cond": [
                            {"$gte": [{"$size": starts}, limit]},
                            {"$add": [{"$arrayElemAt": [starts, -limit]}, {"$cond": [slow, 2 * window, window]}]},
                            0,
                        ]
                    },
                    {
                        "$cond": [
                            {"$gt": [{"$size": starts}, 0]},
                            {"$add": [{"$arrayElemAt": [starts, -1]}, {"$cond": [slow, 2 * gap, gap]}]},
                            0,
                        ]
                    },
                ]
            }

        one_more = {
            "$let": {
                "vars": {"free": free_at("$$value.starts")},
                "in": {
                    "$cond": [
                        {"$lte": ["$$free", {"$add": ["$now", ahead]}]},
                        {
                            "starts": {"$slice": [{"$concatArrays": ["$$value.starts", ["$$free"]]}, -limit]},
                            "granted": {"$concatArrays": ["$$value.granted", ["$$free"]]},
                        },
                        "$$value",
                    ]
                },
            }
        }
        pipeline: list[dict[str, Any]] = [
            {"$set": {"now": _NOW, "starts": {"$ifNull": ["$starts", []]}}},
            {
                "$set": {
                    "taken": {
                        "$reduce": {
                            "input": {"$range": [0, count]},
                            "initialValue": {"starts": "$starts", "granted": []},
                            "in": one_more,
                        }
                    }
                }
            },
            {"$set": {"starts": "$taken.starts", "granted": "$taken.granted"}},
            {"$set": {"next_at": free_at("$starts")}},
            {"$unset": ["taken"]},
        ]
        document = None
        for _ in range(3):  # callers racing to create the number's bucket: the losers update the winner's
            with contextlib.suppress(DuplicateKeyError):
                document = await self._db[NUMBER_BUCKETS].find_one_and_update(
                    {"_id": phone_number_id},
                    pipeline,
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                    projection={"now": 1, "granted": 1, "next_at": 1},
                )
            if document is not None:
                break
        assert document is not None
        self.clock.note(document["now"], time.time())
        starts = [(self.clock.local(stored), stored) for stored in document["granted"]]
        return Grant(starts, self.clock.local(document["next_at"]))

    async def unused_start(self, phone_number_id: str, stored: float) -> None:
        """A start the caller did not use (it woke too late for it) leaves the log: the log counts calls made,
        so the number's next callers get its place. Removing it only ever makes the log more exact."""
        await self._db[NUMBER_BUCKETS].update_one({"_id": phone_number_id}, {"$pull": {"starts": stored}})

    async def slow_number(self, phone_number_id: str, pause: float, slow: float) -> None:
        """Meta answered 130429: `waflow_outbound.domain.after_rate_limit`, in one atomic update."""
        pause_ms, slow_ms = pause * 1000, slow * 1000
        repeated = {
            "$and": [
                {"$gte": ["$now", _ms("paused_until")]},
                {"$lt": ["$now", {"$add": [_ms("struck_at"), slow_ms]}]},
            ]
        }
        await self._db[NUMBER_BUCKETS].update_one(
            {"_id": phone_number_id},
            [
                {"$set": {"now": _NOW}},
                {
                    "$set": {
                        "paused_until": {"$max": [_ms("paused_until"), {"$add": ["$now", pause_ms]}]},
                        "slow_until": {
                            "$cond": [
                                repeated,
                                {"$max": [_ms("slow_until"), {"$add": ["$now", pause_ms + slow_ms]}]},
                                _ms("slow_until"),
                            ]
                        },
                        "struck_at": "$now",
                    }
                },
            ],
            upsert=True,
        )

    async def customer_slot(self, key: str, interval: float, burst: int) -> float:
        """The start time (this host's clock) of the next message to one customer: `burst` at once, then one
        per `interval` (Meta's pair rate), and none while blocked after a 131056."""
        step = interval * 1000
        tolerance = (burst - 1) * step
        return await self._take(
            CUSTOMER_BUCKETS,
            key,
            [
                {"$set": {"now": _NOW, "used_at": "$$NOW"}},
                {"$set": {"slot": {"$max": ["$now", {"$subtract": [_ms("tat"), tolerance]}, _ms("blocked_until")]}}},
                {"$set": {"tat": {"$add": [{"$max": [_ms("tat"), "$slot"]}, step]}}},
            ],
        )

    async def customer_refused(self, key: str) -> float:
        """Meta answered 131056 (pair rate): block the customer for 4^n seconds (n = refusals so far, at most 5);
        returns the end of the block on this host's clock."""
        document = await self._db[CUSTOMER_BUCKETS].find_one_and_update(
            {"_id": key},
            [
                {"$set": {"now": _NOW, "used_at": "$$NOW", "strikes": {"$min": [5, _ms("strikes")]}}},
                {
                    "$set": {
                        "blocked_until": {"$add": ["$now", {"$multiply": [1000, {"$pow": [4, "$strikes"]}]}]},
                        "strikes": {"$add": ["$strikes", 1]},
                    }
                },
            ],
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert document is not None
        self.clock.note(document["now"], time.time())
        return self.clock.local(document["blocked_until"])
