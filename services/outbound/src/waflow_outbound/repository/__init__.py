"""All of outbound's MongoDB code: requests and their claims, the window and blacklist, templates, favourites.

Every request (a send.requested, a read receipt) is one document, inserted once (its `_id` is the tenant and the
request id, so a redelivered command is a duplicate key and changes nothing) and moved through its states by
conditional single-document updates: `pending` → `calling` (recorded just before the call to WhatsApp) →
`done` (its one outcome stored, then published). An instance works only on requests it has claimed (`owner`,
`claim_until`) and renews its claims while it holds them; a killed instance's claims expire and any instance's
recovery claims them with `find_one_and_update`, so each request is worked on by one instance at a time and
each attempt calls WhatsApp at most once. Finished requests expire (TTL on `finished_at`). The window and the
blacklist are read from the database at every gate, so every instance sees what any instance consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReplaceOne, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from waflow_common.customers import identities

from waflow_outbound.domain import WINDOW

log = logging.getLogger(__name__)

Document = dict[str, Any]

WINDOW_KEPT = WINDOW * 30

DATABASE = "waflow_outbound"
REQUESTS = "requests"  # one per send request or read receipt: its state, claim, attempts and outcome
WINDOWS = "windows"  # one per (tenant, number, customer id): Meta's timestamp of the customer's last message
CONTACTS = "contact_states"  # one per (tenant, contact): its newest version, blacklist flag and every id
TEMPLATES = "templates"
FAVOURITES = "favourites"

_DUPLICATE = 11000


def request_key(tenant_id: str, request_id: str) -> str:
    return f"{tenant_id}:{request_id}"


def read_request_id(wamid: str) -> str:
    """A read receipt's request id: one per wamid, so a repeated chat.read marks it once."""
    return f"read:{wamid}"


class OutboundRepository:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        owner: str = "",
        *,
        claim_seconds: float = 20.0,
        finished_kept: timedelta = timedelta(days=7),
    ) -> None:
        self._db = db
        self.owner = owner
        self.claim_seconds = claim_seconds
        self._finished_kept = finished_kept

    async def create_indexes(self) -> None:
        requests = self._db[REQUESTS]
        await requests.create_index([("tenant_id", ASCENDING), ("request_id", ASCENDING)], unique=True)
        await requests.create_index("claim_until")  # recovery: expired claims, oldest first
        await requests.create_index("finished_at", expireAfterSeconds=int(self._finished_kept.total_seconds()))
        await self._db[TEMPLATES].create_index([("tenant_id", 1), ("name", 1), ("language", 1)])
        await self._db[TEMPLATES].create_index([("tenant_id", 1), ("waba_id", 1), ("name", 1), ("language", 1)])
        await self._db[FAVOURITES].create_index([("tenant_id", 1), ("template_id", 1)], unique=True)
        await self._db[CONTACTS].create_index([("tenant_id", 1), ("ids", 1)])
        # A window closed a month ago matters to nobody (Meta takes read receipts for 30 days at most).
        await self._db[WINDOWS].create_index("last_inbound_at", expireAfterSeconds=int(WINDOW_KEPT.total_seconds()))

    # --- requests ------------------------------------------------------------------------------------------
    def _claim(self, now: datetime) -> Document:
        return {"owner": self.owner, "claim_until": now + timedelta(seconds=self.claim_seconds)}

    async def add_requests(self, documents: list[Document], now: datetime) -> list[bool]:
        """Inserts new requests, claimed by this instance; False for each one stored before (a repeat)."""
        if not documents:
            return []
        fresh = [d | {"state": "pending", "attempts": 0} | self._claim(now) for d in documents]
        try:
            await self._db[REQUESTS].insert_many(fresh, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE for e in errors):
                raise
            duplicates = {e["index"] for e in errors}
            return [i not in duplicates for i in range(len(documents))]
        return [True] * len(documents)

    async def renew(self, keys: list[str], now: datetime) -> None:
        """Extends this instance's claims on the requests it still holds."""
        for start in range(0, len(keys), 1000):
            await self._db[REQUESTS].update_many(
                {"_id": {"$in": keys[start : start + 1000]}, "owner": self.owner}, {"$set": self._claim(now)}
            )

    async def begin_attempt(self, key: str, attempt: int, now: datetime, *, again: bool = False) -> bool:
        """Records that attempt `attempt` is about to call WhatsApp; False if this instance no longer owns the
        request in that state (then it must not call). From here a crash cannot tell whether WhatsApp got it.

        `again`: this instance recorded the attempt already but could not call (the database went away); it
        may go on only if the request is still its own and that attempt's."""
        states: Document | str = {"$in": ["pending", "calling"]} if again else "pending"
        result = await self._db[REQUESTS].update_one(
            {"_id": key, "owner": self.owner, "state": states, "attempts": attempt},
            {"$set": {"state": "calling", "called_at": now}},
        )
        return result.matched_count == 1

    async def retry_later(self, key: str, code: int | None) -> bool:
        """Meta answered a temporary failure, so this attempt certainly did not send: the next one may."""
        result = await self._db[REQUESTS].update_one(
            {"_id": key, "owner": self.owner, "state": "calling"},
            {"$set": {"state": "pending"}, "$inc": {"attempts": 1}, "$push": {"retries": code}},
        )
        return result.modified_count == 1

    async def finish(self, key: str, outcome: str, event: Document | None, now: datetime) -> bool:
        """Stores the request's one outcome; False if it has one already (that one stands) or another instance
        claimed it. Without an event to publish (read receipts) the request is closed at once."""
        changes: Document = {"state": "done", "outcome": outcome, "finished_at": now, "published": event is None}
        update: Document = {"$set": changes}
        if event is None:
            update["$unset"] = {"owner": "", "claim_until": ""}
        else:
            changes["event"] = event
        result = await self._db[REQUESTS].update_one(
            {"_id": key, "owner": self.owner, "state": {"$in": ["pending", "calling"]}}, update
        )
        return result.modified_count == 1

    async def mark_published(self, keys: list[str]) -> None:
        """These requests' results are on Kafka: recovery need not publish them again."""
        await self._db[REQUESTS].update_many(
            {"_id": {"$in": keys}, "state": "done"},
            {"$set": {"published": True}, "$unset": {"owner": "", "claim_until": ""}},
        )

    async def claim_expired(self, now: datetime, limit: int) -> list[Document]:
        """Claims up to `limit` requests whose owner stopped renewing (killed, or cut off for longer than a
        claim): atomically, so two instances' recoveries never take the same one."""
        claimed: list[Document] = []
        for _ in range(limit):
            document = await self._db[REQUESTS].find_one_and_update(
                {"claim_until": {"$lt": now}},
                {"$set": self._claim(now)},
                sort=[("claim_until", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if document is None:
                break
            claimed.append(document)
        return claimed

    async def request(self, key: str) -> Document | None:
        return await self._db[REQUESTS].find_one({"_id": key})

    # --- projections: the window and the blacklist, read at every gate ---------------------------------------
    async def record_inbound(
        self,
        tenant_id: str,
        phone_number_id: str,
        wa_id: str,
        wamid: str,
        timestamp: datetime,
        user_id: str | None = None,
    ) -> None:
        """The window under every id of the customer (their BSUID, every form of their number), forward only:
        `$max` never lets a late, older message shorten it. `wamid` is not needed: a repeat changes nothing."""
        del wamid
        await asyncio.gather(
            *(self._raise_window(tenant_id, phone_number_id, i, timestamp) for i in identities(wa_id, user_id))
        )

    async def _raise_window(self, tenant_id: str, phone_number_id: str, identity: str, timestamp: datetime) -> None:
        key = f"{tenant_id}:{phone_number_id}:{identity}"
        for _ in range(3):
            try:
                await self._db[WINDOWS].update_one(
                    {"_id": key},
                    {
                        "$max": {"last_inbound_at": timestamp},
                        "$setOnInsert": {"tenant_id": tenant_id, "phone_number_id": phone_number_id, "id": identity},
                    },
                    upsert=True,
                )
                return
            except DuplicateKeyError:
                continue  # two first messages raced to insert it; the next try updates the winner's

    async def last_inbound_at(
        self, tenant_id: str, phone_number_id: str, wa_id: str, user_id: str | None = None
    ) -> datetime | None:
        """The customer's last message to that number, known by any of their ids."""
        keys = [f"{tenant_id}:{phone_number_id}:{i}" for i in identities(wa_id, user_id)]
        if not keys:
            return None
        found = [d["last_inbound_at"] async for d in self._db[WINDOWS].find({"_id": {"$in": keys}})]
        return max(found, default=None)

    async def record_contact(
        self,
        tenant_id: str,
        wa_id: str,
        version: int,
        blacklisted: bool,
        *,
        contact_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Keeps each contact's newest snapshot (only a higher version replaces it) and every id it was known by.

        The guarded upsert matches only an older stored version; against a newer one the upsert collides with
        its `_id` (11000) and the snapshot's ids are added without touching the state."""
        contact = contact_id or wa_id
        key = f"{tenant_id}:{contact}"
        ids = list(identities(wa_id, user_id))
        state = {"tenant_id": tenant_id, "contact_id": contact, "version": version, "blacklisted": blacklisted}
        update = {"$set": state, "$addToSet": {"ids": {"$each": ids}}}
        collection = self._db[CONTACTS]
        try:
            await collection.update_one({"_id": key, "version": {"$lt": version}}, update, upsert=True)
            return
        except DuplicateKeyError:
            pass
        # Stored already: either an older version (a racing first insert won) or a newer or equal one.
        result = await collection.update_one({"_id": key, "version": {"$lt": version}}, update)
        if result.matched_count == 0:
            await collection.update_one({"_id": key}, {"$addToSet": {"ids": {"$each": ids}}})

    async def blacklisted(self, tenant_id: str, wa_id: str, user_id: str | None = None) -> bool:
        """True if a blacklisted contact is known by any id of the customer: their BSUID or any form of their
        number (a contact deleted as +52 1 55… blocks +52 55…, and the other way round)."""
        ids = list(identities(wa_id, user_id))
        if not ids:
            return False
        found = await self._db[CONTACTS].find_one(
            {"tenant_id": tenant_id, "ids": {"$in": ids}, "blacklisted": True}, {"_id": 1}
        )
        return found is not None

    # --- templates and favourites --------------------------------------------------------------------------
    async def replace_templates(self, tenant_id: str, waba_id: str, templates: list[Document]) -> None:
        """The WABA's templates become exactly `templates` (each with its `template_id`)."""
        keep = [f"{tenant_id}:{t['template_id']}" for t in templates]
        if templates:
            await self._db[TEMPLATES].bulk_write(
                [
                    ReplaceOne({"_id": key}, template | {"_id": key, "tenant_id": tenant_id}, upsert=True)
                    for key, template in zip(keep, templates, strict=True)
                ],
                ordered=False,
            )
        await self._db[TEMPLATES].delete_many({"tenant_id": tenant_id, "waba_id": waba_id, "_id": {"$nin": keep}})

    async def templates(self, tenant_id: str) -> list[Document]:
        return [t async for t in self._db[TEMPLATES].find({"tenant_id": tenant_id})]

    async def template(self, tenant_id: str, waba_id: str, name: str, language: str) -> Document | None:
        return await self._db[TEMPLATES].find_one(
            {"tenant_id": tenant_id, "waba_id": waba_id, "name": name, "language": language}
        )

    async def favourites(self, tenant_id: str) -> set[str]:
        return {f["template_id"] async for f in self._db[FAVOURITES].find({"tenant_id": tenant_id})}

    async def add_favourite(self, tenant_id: str, template_id: str, at: datetime) -> None:
        with contextlib.suppress(DuplicateKeyError):
            await self._db[FAVOURITES].insert_one(
                {"_id": f"{tenant_id}:{template_id}", "tenant_id": tenant_id, "template_id": template_id, "at": at}
            )

    async def remove_favourite(self, tenant_id: str, template_id: str) -> None:
        await self._db[FAVOURITES].delete_one({"_id": f"{tenant_id}:{template_id}"})
