"""All of outbound's MongoDB code. Hot paths only ever insert (insert-if-new), grouped into batches.

Why append-only: on our MongoDB-protocol server (FerretDB over SQLite) an update or delete costs a scan of
the whole collection (measured: ~50 updates/s at 5,000 documents, ~6/s at 20,000) while `insert_many` stores
thousands of documents per second, and concurrent writers to one database collide ("database is locked").
So every state change of a send is a new document with a deterministic `_id` that starts with the tenant id,
written by one `Journal` task in batches; a duplicate `_id` is how a repeated step is recognised. The same
design runs unchanged on MongoDB. Projections (window, blacklist) are kept in memory and rebuilt from their
append-only records at start. Small, rarely written collections (templates, favourites) use plain updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure
from waflow_common.customers import identities

from waflow_outbound.domain import WINDOW

log = logging.getLogger(__name__)

Document = dict[str, Any]

REQUESTS = "requests"  # one per send.requested, as recorded before anything else happens
CALLS = "calls"  # one per attempt, written BEFORE the call to WhatsApp starts
RETRIES = "retries"  # one per attempt that Meta answered with a temporary failure (so it is safe to retry)
OUTCOMES = "outcomes"  # one per request: the result event; its `_id` makes "one result per request" hold
PUBLISHED = "published"  # one per outcome whose event Kafka acknowledged
INBOUND = "inbound"  # customer messages that open the window
CONTACTS = "contacts"  # contact snapshots (contact_id, wa_id, user_id, version, blacklisted)
READS = "reads"  # read receipts asked for
READS_DONE = "reads_done"
TEMPLATES = "templates"
FAVOURITES = "favourites"

_DUPLICATE = 11000


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and "database is locked" in str(exc)


class Journal:
    """Group commit of inserts: callers await their own document; one task writes batches per collection."""

    def __init__(self, db: AsyncDatabase[Document], *, max_batch: int = 500) -> None:
        self._db = db
        self._max_batch = max_batch
        self._pending: list[tuple[str, Document, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()  # other writers of this database take it too: SQLite has one writer

    async def insert(self, collection: str, document: Document) -> bool:
        """True if stored now, False if a document with this `_id` was stored before."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((collection, document, future))
        self._wake.set()
        return await future

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbound-journal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch * 4], self._pending[self._max_batch * 4 :]
                by_collection: dict[str, list[tuple[Document, asyncio.Future[bool]]]] = defaultdict(list)
                for name, document, future in batch:
                    by_collection[name].append((document, future))
                for name, items in by_collection.items():
                    for start in range(0, len(items), self._max_batch):
                        await self._write(name, items[start : start + self._max_batch])

    async def _write(self, name: str, items: list[tuple[Document, asyncio.Future[bool]]]) -> None:
        delay = 0.05
        while True:
            try:
                async with self.lock:
                    await self._db[name].insert_many([d for d, _ in items], ordered=False)
                outcomes = [True] * len(items)
                break
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE for e in errors):
                    if any("database is locked" in str(e.get("errmsg", "")) for e in errors):
                        # Store only the documents that failed for the lock; the others are in.
                        failed = {e["index"] for e in errors if e.get("code") != _DUPLICATE}
                        done = {e["index"]: False for e in errors if e.get("code") == _DUPLICATE}
                        for index, (_, future) in enumerate(items):
                            if index not in failed and not future.done():
                                future.set_result(done.get(index, True))
                        items = [items[i] for i in sorted(failed)]
                        await asyncio.sleep(delay)
                        continue
                    for _, future in items:
                        if not future.done():
                            future.set_exception(exc)
                    return
                duplicates = {e["index"] for e in errors}
                outcomes = [i not in duplicates for i in range(len(items))]
                break
            except Exception as exc:
                # An unreachable server is waited out too: failing the callers would drop their send jobs
                # until a restart (a request WhatsApp already accepted could then never report it).
                if _locked(exc) or isinstance(exc, OSError | ConnectionFailure):
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)
                    continue
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                return
        for (_, future), stored in zip(items, outcomes, strict=True):
            if not future.done():
                future.set_result(stored)


def request_key(tenant_id: str, request_id: str) -> str:
    return f"{tenant_id}:{request_id}"


@dataclass
class Recovered:
    """What a restart finds: requests to go on with, requests cut off mid-call, results not yet published."""

    pending: list[tuple[Document, int]] = field(default_factory=list)  # (request, attempts made)
    cut_off: list[tuple[Document, int]] = field(default_factory=list)
    unpublished: list[Document] = field(default_factory=list)
    reads: list[Document] = field(default_factory=list)


class OutboundRepository:
    def __init__(self, db: AsyncDatabase[Document], journal: Journal) -> None:
        self._db = db
        self.journal = journal
        self._windows: dict[tuple[str, str, str], datetime] = {}
        self._contacts: dict[tuple[str, str], tuple[int, bool]] = {}  # (tenant, contact_id) → (version, blacklisted)
        self._contact_ids: dict[tuple[str, str], set[str]] = {}  # (tenant, any id of a customer) → contact_ids

    async def create_indexes(self) -> None:
        # Point lookups all go through `_id` (tenant first); these serve the API's listing of small collections.
        await self._db[TEMPLATES].create_index([("tenant_id", 1), ("name", 1), ("language", 1)])
        await self._db[FAVOURITES].create_index([("tenant_id", 1), ("template_id", 1)], unique=True)

    # --- sends ---------------------------------------------------------------------------------------------
    async def record_request(self, document: Document) -> bool:
        return await self.journal.insert(REQUESTS, document)

    async def record_call(self, tenant_id: str, request_id: str, attempt: int, at: datetime) -> None:
        key = request_key(tenant_id, request_id)
        await self.journal.insert(CALLS, {"_id": f"{key}:{attempt}", "tenant_id": tenant_id, "at": at})

    async def record_retry(self, tenant_id: str, request_id: str, attempt: int, code: int | None) -> None:
        key = request_key(tenant_id, request_id)
        await self.journal.insert(RETRIES, {"_id": f"{key}:{attempt}", "tenant_id": tenant_id, "code": code})

    async def record_outcome(self, tenant_id: str, request_id: str, event: Document, decided_at: datetime) -> bool:
        """False if this request already has an outcome (then that one stands and nothing is published)."""
        document = {"_id": request_key(tenant_id, request_id), "tenant_id": tenant_id, "event": event}
        return await self.journal.insert(OUTCOMES, document | {"decided_at": decided_at})

    async def mark_published(self, tenant_id: str, request_id: str) -> None:
        await self.journal.insert(PUBLISHED, {"_id": request_key(tenant_id, request_id), "tenant_id": tenant_id})

    async def record_read(self, document: Document) -> bool:
        return await self.journal.insert(READS, document)

    async def read_done(self, key: str, tenant_id: str, outcome: str) -> None:
        """A read receipt is finished: `accepted` by WhatsApp, or the reason it was not (or could not be) sent."""
        await self.journal.insert(READS_DONE, {"_id": key, "tenant_id": tenant_id, "outcome": outcome})

    async def _ids(self, name: str) -> set[str]:
        return {d["_id"] async for d in self._db[name].find({}, {"_id": 1})}

    async def recover(self) -> Recovered:
        """Reads every unfinished piece of work; run once at start, before anything is consumed."""
        outcomes = await self._ids(OUTCOMES)
        calls: dict[str, int] = defaultdict(int)
        for call_id in await self._ids(CALLS):
            calls[call_id.rsplit(":", 1)[0]] += 1
        retries: dict[str, int] = defaultdict(int)
        for retry_id in await self._ids(RETRIES):
            retries[retry_id.rsplit(":", 1)[0]] += 1
        found = Recovered()
        async for request in self._db[REQUESTS].find({}):
            key = request["_id"]
            if key in outcomes:
                continue
            made = calls.get(key, 0)
            if made > retries.get(key, 0):
                found.cut_off.append((request, made))
            else:
                found.pending.append((request, made))
        published = await self._ids(PUBLISHED)
        async for outcome in self._db[OUTCOMES].find({}):
            if outcome["_id"] not in published:
                found.unpublished.append(outcome)
        done = await self._ids(READS_DONE)
        found.reads = [r async for r in self._db[READS].find({}) if r["_id"] not in done]
        return found

    # --- projections ---------------------------------------------------------------------------------------
    async def load_projections(self, now: datetime) -> None:
        async for record in self._db[INBOUND].find({"timestamp": {"$gte": now - WINDOW}}):
            self._note_inbound(
                record["tenant_id"],
                record["phone_number_id"],
                identities(record["wa_id"], record.get("user_id")),
                record["timestamp"],
            )
        async for record in self._db[CONTACTS].find({}):
            self._note_contact(
                record["tenant_id"],
                # Records written before contacts had ids here stand for the contact of their wa_id.
                record.get("contact_id") or record["wa_id"],
                identities(record["wa_id"], record.get("user_id")),
                record["version"],
                record["blacklisted"],
            )

    def _note_inbound(self, tenant_id: str, phone_number_id: str, ids: tuple[str, ...], timestamp: datetime) -> None:
        """The window under every id of the customer (their BSUID, every form of their number)."""
        for identity in ids:
            key = (tenant_id, phone_number_id, identity)
            current = self._windows.get(key)
            if current is None or timestamp > current:  # forward only: a late, older message never shortens it
                self._windows[key] = timestamp

    def _note_contact(
        self, tenant_id: str, contact_id: str, ids: tuple[str, ...], version: int, blacklisted: bool
    ) -> None:
        """Keeps each contact's newest state, and which contacts each of their ids names."""
        current = self._contacts.get((tenant_id, contact_id))
        if current is None or version > current[0]:
            self._contacts[(tenant_id, contact_id)] = (version, blacklisted)
        for identity in ids:
            self._contact_ids.setdefault((tenant_id, identity), set()).add(contact_id)

    async def record_inbound(
        self,
        tenant_id: str,
        phone_number_id: str,
        wa_id: str,
        wamid: str,
        timestamp: datetime,
        user_id: str | None = None,
    ) -> None:
        await self.journal.insert(
            INBOUND,
            {
                "_id": f"{tenant_id}:{wamid}",
                "tenant_id": tenant_id,
                "phone_number_id": phone_number_id,
                "wa_id": wa_id,
                "user_id": user_id,
                "timestamp": timestamp,
            },
        )
        self._note_inbound(tenant_id, phone_number_id, identities(wa_id, user_id), timestamp)

    def last_inbound_at(
        self, tenant_id: str, phone_number_id: str, wa_id: str, user_id: str | None = None
    ) -> datetime | None:
        """The customer's last message to that number, known by any of their ids."""
        found = [self._windows.get((tenant_id, phone_number_id, i)) for i in identities(wa_id, user_id)]
        return max((at for at in found if at is not None), default=None)

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
        contact = contact_id or wa_id
        await self.journal.insert(
            CONTACTS,
            {
                "_id": f"{tenant_id}:{contact}:{version}",
                "tenant_id": tenant_id,
                "contact_id": contact,
                "wa_id": wa_id,
                "user_id": user_id,
                "version": version,
                "blacklisted": blacklisted,
            },
        )
        self._note_contact(tenant_id, contact, identities(wa_id, user_id), version, blacklisted)

    def blacklisted(self, tenant_id: str, wa_id: str, user_id: str | None = None) -> bool:
        """True if a blacklisted contact is known by any id of the customer: their BSUID or any form of their
        number (a contact deleted as +52 1 55… blocks +52 55…, and the other way round)."""
        for identity in identities(wa_id, user_id):
            for contact_id in self._contact_ids.get((tenant_id, identity), ()):
                current = self._contacts.get((tenant_id, contact_id))
                if current is not None and current[1]:
                    return True
        return False

    # --- templates and favourites --------------------------------------------------------------------------
    async def replace_templates(self, tenant_id: str, waba_id: str, templates: list[Document]) -> None:
        """The WABA's templates become exactly `templates` (each with its `template_id`)."""
        keep = [f"{tenant_id}:{t['template_id']}" for t in templates]
        async with self.journal.lock:
            # One by one: FerretDB's bulk_write answer lacks fields PyMongo expects; a WABA has few templates.
            for key, template in zip(keep, templates, strict=True):
                await self._db[TEMPLATES].replace_one(
                    {"_id": key}, template | {"_id": key, "tenant_id": tenant_id}, upsert=True
                )
            await self._db[TEMPLATES].delete_many({"tenant_id": tenant_id, "waba_id": waba_id, "_id": {"$nin": keep}})

    async def templates(self, tenant_id: str) -> list[Document]:
        return [t async for t in self._db[TEMPLATES].find({"tenant_id": tenant_id})]

    async def all_templates(self) -> list[Document]:
        return [t async for t in self._db[TEMPLATES].find({})]

    async def favourites(self, tenant_id: str) -> set[str]:
        return {f["template_id"] async for f in self._db[FAVOURITES].find({"tenant_id": tenant_id})}

    async def add_favourite(self, tenant_id: str, template_id: str, at: datetime) -> None:
        with contextlib.suppress(DuplicateKeyError):
            async with self.journal.lock:
                await self._db[FAVOURITES].insert_one(
                    {"_id": f"{tenant_id}:{template_id}", "tenant_id": tenant_id, "template_id": template_id, "at": at}
                )

    async def remove_favourite(self, tenant_id: str, template_id: str) -> None:
        async with self.journal.lock:
            await self._db[FAVOURITES].delete_one({"_id": f"{tenant_id}:{template_id}"})
