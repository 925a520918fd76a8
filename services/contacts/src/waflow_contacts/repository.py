"""Every MongoDB call of the contacts service; each document's `_id` starts with its tenant id.

Designed around FerretDB v1 on SQLite, measured (bench/contacts and the service's report):
- only an exact `_id` filter reaches SQLite; any other find reads and decodes the whole collection;
- even the `_id` lookup scans the table: FerretDB indexes `sjson->"_id"` but queries `sjson->'$._id'`, an
  expression SQLite does not match to that index, so a point read costs ~15 us per document in the collection;
- updates are read-modify-write without isolation (100 concurrent `$inc` on one document end at 8).
So every read and write addresses one document by `_id` (`<tenant_id>:<contact_id>`: a foreign id simply does
not exist), writes to one document are serialised in this process (KeyedLocks), whole-collection reads
happen once at start, and contacts are spread over CONTACT_SHARDS collections by a hash of their key so a
point read scans ~1/1024 of them. On MongoDB proper the shards cost nothing and `_id` is the only index used.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from waflow_common.customers import CustomerLinks
from waflow_common.events.contacts import ContactSnapshot
from waflow_common.outbox import OUTBOX_FIELD

from waflow_contacts.domain import FieldDefinition, FieldType

Document = dict[str, Any]

_SNAPSHOT_FIELDS = set(ContactSnapshot.model_fields)

# Fixed for the life of a deployment: changing it moves every contact to another collection.
CONTACT_SHARDS = 1024
SHARD_PREFIX = "contacts_"


def contact_key(tenant_id: str, contact_id: str) -> str:
    return f"{tenant_id}:{contact_id}"


def shard_name(key: str) -> str:
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return f"{SHARD_PREFIX}{int.from_bytes(digest, 'big') % CONTACT_SHARDS:03x}"


def contact_document(tenant_id: str, contact: ContactSnapshot) -> Document:
    return {"_id": contact_key(tenant_id, contact.contact_id), "tenant_id": tenant_id, **contact.model_dump()}


def snapshot_of(doc: Document) -> ContactSnapshot:
    return ContactSnapshot.model_validate({k: v for k, v in doc.items() if k in _SNAPSHOT_FIELDS})


class ContactRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        # Which contacts have parked events: written before the change, so the relay never has to look
        # through the contacts to find them (see relay.py).
        self.pending = db["outbox_pending"]
        self.fields = db["field_definitions"]
        self.lists = db["lists"]
        # Which customer each id (BSUID, every form of a number) belongs to: one point read by `_id`.
        self.links = CustomerLinks(db["customer_links"])

    def _contacts(self, key: str) -> AsyncCollection[Document]:
        return self._db[shard_name(key)]

    # --- contacts ---------------------------------------------------------------------------------------------

    async def get(self, tenant_id: str, contact_id: str) -> ContactSnapshot | None:
        key = contact_key(tenant_id, contact_id)
        doc = await self._contacts(key).find_one({"_id": key}, {OUTBOX_FIELD: 0})
        return snapshot_of(doc) if doc else None

    async def save(self, tenant_id: str, contact: ContactSnapshot, entry: Document) -> None:
        """The change and its event in one update of one document (the embedded outbox)."""
        doc = contact_document(tenant_id, contact)
        key = doc.pop("_id")
        await self.pending.update_one({"_id": key}, {"$set": {"tenant_id": tenant_id}}, upsert=True)
        await self._contacts(key).update_one({"_id": key}, {"$set": doc, "$push": {OUTBOX_FIELD: entry}}, upsert=True)

    async def all_contacts(self) -> AsyncIterator[tuple[str, ContactSnapshot]]:
        """Every tenant's contacts, once at start: one pass over the shards rather than one per tenant.

        Several shards at once: each find costs FerretDB ~10 ms however small the collection.
        """
        names = sorted(n for n in await self._db.list_collection_names() if n.startswith(SHARD_PREFIX))
        gate = asyncio.Semaphore(8)

        async def read(name: str) -> list[Document]:
            async with gate:
                return await self._db[name].find({}, {OUTBOX_FIELD: 0}).to_list()

        for start in range(0, len(names), 64):
            for docs in await asyncio.gather(*(read(n) for n in names[start : start + 64])):
                for doc in docs:
                    yield doc["tenant_id"], snapshot_of(doc)

    async def insert_many(self, tenant_id: str, contacts: Sequence[ContactSnapshot]) -> None:
        """Seeds (the benchmark): no events, as if they had been relayed long ago."""
        by_shard: defaultdict[str, list[Document]] = defaultdict(list)
        for contact in contacts:
            doc = contact_document(tenant_id, contact) | {OUTBOX_FIELD: []}
            by_shard[shard_name(doc["_id"])].append(doc)
        gate = asyncio.Semaphore(8)

        async def insert(name: str, docs: list[Document]) -> None:
            async with gate:
                await self._db[name].insert_many(docs, ordered=False)

        await asyncio.gather(*(insert(name, docs) for name, docs in by_shard.items()))

    # --- outbox ------------------------------------------------------------------------------------------------

    async def pending_keys(self, limit: int = 500) -> list[str]:
        return [doc["_id"] async for doc in self.pending.find({}, {"_id": 1}).limit(limit)]

    async def parked_events(self, key: str) -> list[Document]:
        doc = await self._contacts(key).find_one({"_id": key}, {OUTBOX_FIELD: 1})
        return list(doc.get(OUTBOX_FIELD) or []) if doc else []

    async def clear_parked(self, key: str, entries: list[Document]) -> None:
        """Removes exactly the published entries, as read back.

        `$pullAll` with whole entries, because FerretDB v1's `$pull` ignores conditions on embedded
        documents (`{"$pull": {"outbox": {"event_id": {"$in": [...]}}}}` matches nothing there).
        """
        if entries:
            await self._contacts(key).update_one({"_id": key}, {"$pullAll": {OUTBOX_FIELD: entries}})
        await self.pending.delete_one({"_id": key})

    # --- field definitions (one document per tenant) ------------------------------------------------------------

    async def definitions(self, tenant_id: str) -> dict[str, FieldDefinition]:
        doc = await self.fields.find_one({"_id": tenant_id})
        return {
            key: FieldDefinition(
                key=key,
                label=d["label"],
                type=FieldType(d["type"]),
                options=tuple(d.get("options") or ()),
                retired=bool(d.get("retired")),
            )
            for key, d in ((doc or {}).get("definitions") or {}).items()
        }

    async def save_definition(self, tenant_id: str, definition: FieldDefinition) -> None:
        value = {
            "label": definition.label,
            "type": definition.type.value,
            "options": list(definition.options),
            "retired": definition.retired,
        }
        await self.fields.update_one(
            {"_id": tenant_id},
            {"$set": {"tenant_id": tenant_id, f"definitions.{definition.key}": value}},
            upsert=True,
        )

    # --- lists (one document per tenant) -----------------------------------------------------------------------

    async def lists_of(self, tenant_id: str) -> dict[str, Document]:
        """list_id → {name, created_at, pending}; `pending` marks a rename or delete not yet on every member."""
        doc = await self.lists.find_one({"_id": tenant_id})
        return dict((doc or {}).get("lists") or {})

    async def all_pending_lists(self) -> AsyncIterator[tuple[str, str, Document]]:
        async for doc in self.lists.find({}):
            for list_id, value in (doc.get("lists") or {}).items():
                if value.get("pending"):
                    yield doc["_id"], list_id, value

    async def save_list(self, tenant_id: str, list_id: str, value: Document) -> None:
        await self.lists.update_one(
            {"_id": tenant_id}, {"$set": {"tenant_id": tenant_id, f"lists.{list_id}": value}}, upsert=True
        )

    async def drop_list(self, tenant_id: str, list_id: str) -> None:
        await self.lists.update_one({"_id": tenant_id}, {"$unset": {f"lists.{list_id}": ""}})
