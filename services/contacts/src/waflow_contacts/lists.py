"""Static lists: one document per list (unique name per tenant), membership on each contact's snapshot.

A member's snapshot carries the list's id and name, so a rename or a delete is carried to every member as a
contact change. The list document is marked first (`pending`: "rename" or "delete", with `pending_at`), then
each member changes, then the mark is settled; an instance stopped half-way leaves the mark, and the sweep
(one instance at a time, under a lease) carries it on. A member added while a rename or delete is under way is
put right by the adder, which reads the list again after its change.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError
from waflow_common.events.contacts import ContactListRef
from waflow_common.leases import run_leased

from waflow_contacts import domain
from waflow_contacts.book import Cause, ContactBook
from waflow_contacts.domain import Change
from waflow_contacts.errors import ContactNotFound, ListNameTaken, ListNotFound, TooMany
from waflow_contacts.repository import ContactRepository

log = logging.getLogger(__name__)

# A mark older than this belongs to a pass that was cut short (a live pass settles within seconds).
STALE_MARK = timedelta(seconds=60)
MEMBERS_AT_ONCE = 16


@dataclass(frozen=True)
class ContactList:
    list_id: str
    name: str
    members: int
    created_at: Any


@dataclass(frozen=True)
class BulkOutcome:
    changed: int
    unchanged: int
    not_found: list[str]


def name_key(name: str) -> str:
    return name.casefold()


class StaticLists:
    def __init__(self, repository: ContactRepository, book: ContactBook) -> None:
        self._repository = repository
        self._book = book

    async def _view(self, tenant_id: str, doc: dict[str, Any]) -> ContactList:
        members = await self._repository.member_count(tenant_id, doc["list_id"])
        return ContactList(doc["list_id"], doc["name"], members, doc.get("created_at"))

    async def all(self, tenant_id: str) -> list[ContactList]:
        docs = await self._repository.live_lists(tenant_id)
        views = await asyncio.gather(*(self._view(tenant_id, d) for d in docs))
        return sorted(views, key=lambda v: (domain.search_text(v.name), v.list_id))

    async def _live(self, tenant_id: str, list_id: str) -> dict[str, Any]:
        doc = await self._repository.live_list(tenant_id, list_id)
        if doc is None:
            raise ListNotFound("list not found")
        return doc

    async def get(self, tenant_id: str, list_id: str) -> ContactList:
        return await self._view(tenant_id, await self._live(tenant_id, list_id))

    async def _name_taken(self, tenant_id: str, name: str) -> ListNameTaken:
        other = await self._repository.list_named(tenant_id, name_key(name))
        return ListNameTaken(f"a list named {(other or {}).get('name', name)!r} exists")

    async def create(self, tenant_id: str, raw_name: str) -> ContactList:
        name = domain.normalise_list_name(raw_name)
        # Checked before the insert: two instances creating the last list may both pass.
        if await self._repository.list_count(tenant_id) >= domain.MAX_LISTS_PER_TENANT:
            raise TooMany(f"a tenant has at most {domain.MAX_LISTS_PER_TENANT} lists")
        try:
            doc = await self._repository.insert_list(
                tenant_id, domain.new_list_id(), name, name_key(name), self._book.now()
            )
        except DuplicateKeyError:
            raise await self._name_taken(tenant_id, name) from None
        return ContactList(doc["list_id"], name, 0, doc["created_at"])

    async def rename(self, tenant_id: str, list_id: str, raw_name: str, cause: Cause) -> ContactList:
        """Every member's snapshot carries the list's name, so each member gets a new version."""
        name = domain.normalise_list_name(raw_name)
        mark = {"name": name, "name_key": name_key(name), "pending": "rename", "pending_at": self._book.now()}
        try:
            doc = await self._repository.mark_list(tenant_id, list_id, mark)
        except DuplicateKeyError:
            raise await self._name_taken(tenant_id, name) from None
        if doc is None:
            raise ListNotFound("list not found")
        await self._carry(tenant_id, doc, cause)
        return await self._view(tenant_id, doc)

    async def delete(self, tenant_id: str, list_id: str, cause: Cause) -> None:
        # The name is freed at once: a new list may take it while the members leave this one.
        mark = {"pending": "delete", "pending_at": self._book.now(), "name_key": f"\x00deleted:{list_id}"}
        doc = await self._repository.mark_list(tenant_id, list_id, mark)
        if doc is None:
            raise ListNotFound("list not found")
        await self._carry(tenant_id, doc, cause)

    @staticmethod
    def _change_for(doc: dict[str, Any]) -> Change:
        if doc.get("pending") == "delete":
            return domain.leave_list(doc["list_id"])
        return domain.rename_list(ContactListRef(list_id=doc["list_id"], name=doc["name"]))

    async def _carry(self, tenant_id: str, doc: dict[str, Any], cause: Cause) -> None:
        """Carries a rename or delete to every member, then settles the mark."""
        change = self._change_for(doc)
        async for batch in self._repository.member_ids(tenant_id, doc["list_id"]):
            for start in range(0, len(batch), MEMBERS_AT_ONCE):
                await asyncio.gather(
                    *(self._book.change(tenant_id, c, change, cause) for c in batch[start : start + MEMBERS_AT_ONCE])
                )
        await self._repository.settle_list(doc)

    async def sweep(self, now: datetime) -> int:
        """Carries on the renames and deletes whose instance stopped half-way; safe to repeat."""
        docs = await self._repository.stale_pending_lists(now - STALE_MARK)
        for doc in docs:
            await self._carry(doc["tenant_id"], doc, Cause(str(uuid.uuid4())))
        return len(docs)

    async def run_sweeps(self, every: float = 30.0) -> None:
        await run_leased(
            self._repository.leases, "contacts-list-sweep", lambda: self.sweep(self._book.now()), every=every
        )

    async def set_membership(
        self, tenant_id: str, list_id: str, contact_ids: Iterable[str], *, member: bool, cause: Cause
    ) -> BulkOutcome:
        doc = await self._live(tenant_id, list_id)
        ref = ContactListRef(list_id=list_id, name=doc["name"])
        change = domain.join_list(ref) if member else domain.leave_list(list_id)
        changed: list[str] = []
        unchanged = 0
        not_found: list[str] = []
        for contact_id in dict.fromkeys(contact_ids):
            try:
                outcome = await self._book.change(tenant_id, contact_id, change, cause)
            except ContactNotFound:
                not_found.append(contact_id)
                continue
            if outcome.changed:
                changed.append(contact_id)
            else:
                unchanged += 1
        if member and changed:
            await self._put_right(tenant_id, ref, changed, cause)
        return BulkOutcome(len(changed), unchanged, not_found)

    async def _put_right(self, tenant_id: str, ref: ContactListRef, joined: list[str], cause: Cause) -> None:
        """Members that joined while the list was renamed or deleted take the list as it is now."""
        doc = await self._repository.live_list(tenant_id, ref.list_id)
        if doc is not None and doc["name"] == ref.name:
            return
        fix = domain.leave_list(ref.list_id) if doc is None else self._change_for(doc | {"pending": "rename"})
        for contact_id in joined:
            await self._book.change(tenant_id, contact_id, fix, cause)
