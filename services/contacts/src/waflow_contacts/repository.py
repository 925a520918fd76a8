"""Every MongoDB call of the contacts service, tenant id first.

- `contacts`: one document per contact, `_id` = "<tenant_id>:<contact_id>" (a foreign id simply does not exist),
  the snapshot's fields plus `tenant_id`, `name_key` (the listing order) and `search_keys` (see search.py), and
  the embedded outbox. A change is a compare-and-set on `version`: the new snapshot and its event are written
  in one update whose filter holds the version read, so of two racing writers exactly one wins and the other
  reads again (book.py). A new contact is an insert: the unique `_id` lets one of two racing creates win.
- `contact_fields`: one document per field definition, unique (tenant_id, key).
- `contact_lists`: one document per static list, unique (tenant_id, name_key): two lists can never share a name
  whatever instance creates them (11000 → ListNameTaken).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from waflow_common.customers import CustomerLinks
from waflow_common.events.contacts import ContactSnapshot
from waflow_common.leases import LEASES_COLLECTION, Leases
from waflow_common.outbox import OUTBOX_FIELD, OUTBOX_INDEX

from waflow_contacts.domain import FieldDefinition, FieldType, sort_key
from waflow_contacts.search import Filter, keys_of

Document = dict[str, Any]

CONTACTS = "contacts"
_SNAPSHOT_FIELDS = set(ContactSnapshot.model_fields)
_ORDER = [("name_key", ASCENDING), ("_id", ASCENDING)]

CONTACT_INDEXES = [
    IndexModel([("tenant_id", ASCENDING), ("deleted", ASCENDING), *_ORDER], name="tenant_order"),
    IndexModel([("tenant_id", ASCENDING), ("deleted", ASCENDING), ("search_keys", ASCENDING)], name="tenant_search"),
    IndexModel([("tenant_id", ASCENDING), ("tags", ASCENDING), ("deleted", ASCENDING), *_ORDER], name="tenant_tag"),
    IndexModel(
        [("tenant_id", ASCENDING), ("lists.list_id", ASCENDING), ("deleted", ASCENDING), *_ORDER], name="tenant_list"
    ),
    OUTBOX_INDEX,
]


class LostRace(Exception):
    """Another writer changed (or created) the contact since it was read: read it again."""


def contact_key(tenant_id: str, contact_id: str) -> str:
    return f"{tenant_id}:{contact_id}"


def contact_document(tenant_id: str, contact: ContactSnapshot) -> Document:
    return {
        "_id": contact_key(tenant_id, contact.contact_id),
        "tenant_id": tenant_id,
        **contact.model_dump(),
        "name_key": sort_key(contact),
        "search_keys": keys_of(contact),
    }


def snapshot_of(doc: Document) -> ContactSnapshot:
    return ContactSnapshot.model_validate({k: v for k, v in doc.items() if k in _SNAPSHOT_FIELDS})


def _definition_of(d: Document) -> FieldDefinition:
    return FieldDefinition(
        key=d["key"],
        label=d["label"],
        type=FieldType(d["type"]),
        options=tuple(d.get("options") or ()),
        retired=bool(d.get("retired")),
    )


class ContactRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.contacts: AsyncCollection[Document] = db[CONTACTS]
        self.fields = db["contact_fields"]
        self.lists = db["contact_lists"]
        self.leases = Leases(db[LEASES_COLLECTION])
        # Which customer each id (BSUID, every form of a number) belongs to: one point read by `_id`.
        self.links = CustomerLinks(db["customer_links"])

    async def ensure_indexes(self) -> None:
        await self.contacts.create_indexes(CONTACT_INDEXES)
        await self.fields.create_index([("tenant_id", ASCENDING), ("key", ASCENDING)], unique=True)
        await self.lists.create_index([("tenant_id", ASCENDING), ("name_key", ASCENDING)], unique=True)
        await self.lists.create_index([("pending", ASCENDING), ("pending_at", ASCENDING)], sparse=True)

    # --- contacts ---------------------------------------------------------------------------------------------

    async def get(self, tenant_id: str, contact_id: str) -> ContactSnapshot | None:
        doc = await self.contacts.find_one(
            {"_id": contact_key(tenant_id, contact_id)}, {OUTBOX_FIELD: 0, "search_keys": 0}
        )
        return snapshot_of(doc) if doc else None

    async def insert(self, tenant_id: str, contact: ContactSnapshot, entry: Document) -> None:
        """A new contact and its first event; LostRace when another writer made it first."""
        try:
            await self.contacts.insert_one(contact_document(tenant_id, contact) | {OUTBOX_FIELD: [entry]})
        except DuplicateKeyError as exc:
            raise LostRace from exc

    async def replace_if(self, tenant_id: str, contact: ContactSnapshot, entry: Document, *, version: int) -> None:
        """The next version and its event in one update, only if the stored version is still `version`."""
        doc = contact_document(tenant_id, contact)
        key = doc.pop("_id")
        result = await self.contacts.update_one(
            {"_id": key, "version": version}, {"$set": doc, "$push": {OUTBOX_FIELD: entry}}
        )
        if result.matched_count == 0:
            raise LostRace

    async def page(self, filter_: Filter, limit: int) -> list[Document]:
        """Up to `limit` contacts matching `filter_` in the listing order, as stored (no outbox, no keys)."""
        cursor = self.contacts.find(filter_, {OUTBOX_FIELD: 0, "search_keys": 0}).sort(_ORDER).limit(limit)
        return await cursor.to_list()

    async def member_ids(self, tenant_id: str, list_id: str, batch: int = 500) -> AsyncIterator[list[str]]:
        """Every member's contact id (deleted ones too), in batches by `_id`."""
        last = ""
        while True:
            docs = await (
                self.contacts.find(
                    {"tenant_id": tenant_id, "lists.list_id": list_id, "_id": {"$gt": last}}, {"contact_id": 1}
                )
                .sort("_id", ASCENDING)
                .limit(batch)
                .to_list()
            )
            if not docs:
                return
            last = docs[-1]["_id"]
            yield [d["contact_id"] for d in docs]

    async def member_count(self, tenant_id: str, list_id: str) -> int:
        """Members the list's normal listing shows (deleted contacts are not counted)."""
        return await self.contacts.count_documents({"tenant_id": tenant_id, "lists.list_id": list_id, "deleted": False})

    async def tag_counts(self, tenant_id: str) -> dict[str, int]:
        """Contacts per tag, deleted contacts not counted (they are out of the normal listing)."""
        pipeline: list[Document] = [
            {"$match": {"tenant_id": tenant_id, "deleted": False, "tags.0": {"$exists": True}}},
            {"$project": {"tags": 1}},
            {"$unwind": "$tags"},
            {"$group": {"_id": "$tags", "n": {"$sum": 1}}},
        ]
        counts = {doc["_id"]: doc["n"] async for doc in await self.contacts.aggregate(pipeline)}
        return dict(sorted(counts.items()))

    async def insert_many(self, tenant_id: str, contacts: Sequence[ContactSnapshot]) -> None:
        """Seeds (the benchmark): no events, as if they had been relayed long ago."""
        docs = [contact_document(tenant_id, c) | {OUTBOX_FIELD: []} for c in contacts]
        for start in range(0, len(docs), 1000):
            await self.contacts.insert_many(docs[start : start + 1000], ordered=False)

    # --- field definitions ---------------------------------------------------------------------------------------

    async def definitions(self, tenant_id: str) -> dict[str, FieldDefinition]:
        return {d["key"]: _definition_of(d) async for d in self.fields.find({"tenant_id": tenant_id})}

    async def definition(self, tenant_id: str, key: str) -> FieldDefinition | None:
        doc = await self.fields.find_one({"_id": f"{tenant_id}:{key}"})
        return _definition_of(doc) if doc else None

    async def active_fields(self, tenant_id: str) -> int:
        return await self.fields.count_documents({"tenant_id": tenant_id, "retired": False})

    async def insert_definition(self, tenant_id: str, definition: FieldDefinition) -> bool:
        """False when the key exists already (whoever made it)."""
        doc = {
            "_id": f"{tenant_id}:{definition.key}",
            "tenant_id": tenant_id,
            "key": definition.key,
            "label": definition.label,
            "type": definition.type.value,
            "options": list(definition.options),
            "retired": definition.retired,
        }
        try:
            await self.fields.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def update_definition(self, tenant_id: str, definition: FieldDefinition) -> bool:
        """Label and retired flag of a field of the same type and options; False if it has another shape."""
        result = await self.fields.update_one(
            {
                "_id": f"{tenant_id}:{definition.key}",
                "type": definition.type.value,
                "options": list(definition.options),
            },
            {"$set": {"label": definition.label, "retired": definition.retired}},
        )
        return result.matched_count == 1

    async def retire_definition(self, tenant_id: str, key: str) -> FieldDefinition | None:
        doc = await self.fields.find_one_and_update(
            {"_id": f"{tenant_id}:{key}"}, {"$set": {"retired": True}}, return_document=ReturnDocument.AFTER
        )
        return _definition_of(doc) if doc else None

    # --- lists -----------------------------------------------------------------------------------------------------

    async def live_lists(self, tenant_id: str) -> list[Document]:
        return await self.lists.find({"tenant_id": tenant_id, "pending": {"$ne": "delete"}}).to_list()

    async def list_count(self, tenant_id: str) -> int:
        return await self.lists.count_documents({"tenant_id": tenant_id})

    async def live_list(self, tenant_id: str, list_id: str) -> Document | None:
        return await self.lists.find_one({"_id": f"{tenant_id}:{list_id}", "pending": {"$ne": "delete"}})

    async def list_named(self, tenant_id: str, name_key: str) -> Document | None:
        return await self.lists.find_one({"tenant_id": tenant_id, "name_key": name_key})

    async def insert_list(self, tenant_id: str, list_id: str, name: str, name_key: str, now: datetime) -> Document:
        """DuplicateKeyError when the tenant has a list of that name."""
        doc = {
            "_id": f"{tenant_id}:{list_id}",
            "tenant_id": tenant_id,
            "list_id": list_id,
            "name": name,
            "name_key": name_key,
            "created_at": now,
            "pending": None,
        }
        await self.lists.insert_one(doc)
        return doc

    async def mark_list(self, tenant_id: str, list_id: str, values: Document) -> Document | None:
        """Sets `values` on a live list (a rename or the delete mark); None if there is no live list.

        DuplicateKeyError when a rename takes a name another list has."""
        return await self.lists.find_one_and_update(
            {"_id": f"{tenant_id}:{list_id}", "pending": {"$ne": "delete"}},
            {"$set": values},
            return_document=ReturnDocument.AFTER,
        )

    async def settle_list(self, doc: Document) -> None:
        """A rename or delete carried to every member: the mark goes (only the one this pass carried)."""
        if doc.get("pending") == "delete":
            await self.lists.delete_one({"_id": doc["_id"], "pending": "delete"})
        else:
            await self.lists.update_one(
                {"_id": doc["_id"], "pending": doc.get("pending"), "name": doc["name"]}, {"$set": {"pending": None}}
            )

    async def stale_pending_lists(self, before: datetime) -> list[Document]:
        """Renames and deletes marked before `before` and still not settled (their instance was stopped)."""
        return await self.lists.find(
            {"pending": {"$in": ["rename", "delete"]}, "pending_at": {"$lt": before}}
        ).to_list()
