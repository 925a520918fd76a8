"""The contact book: every change to a contact goes through here, is stored with its event, and is indexed."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from waflow_common.customers import PhoneNumber
from waflow_common.events.contacts import ContactChangedEvent, ContactListRef, ContactSnapshot
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.locks import KeyedLocks
from waflow_common.outbox import outbox_entry

from waflow_contacts import domain
from waflow_contacts.domain import Change, FieldDefinition, Identity
from waflow_contacts.errors import (
    BadCursor,
    ContactNotFound,
    FieldConflict,
    FieldNotFound,
    ListNameTaken,
    ListNotFound,
    TooMany,
)
from waflow_contacts.repository import ContactRepository, contact_key
from waflow_contacts.search import ContactDirectory, ContactQuery, InvalidCursor, decode_cursor, encode_cursor


@dataclass(frozen=True)
class Cause:
    """What a change answers: the request or event, for the event's correlation and causation ids."""

    correlation_id: str
    causation_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Outcome:
    contact: ContactSnapshot
    created: bool
    changed: bool


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


class ContactBook:
    def __init__(
        self,
        repository: ContactRepository,
        directory: ContactDirectory,
        locks: KeyedLocks,
        notify: Callable[[str], None],
        clock: Clock,
    ) -> None:
        self._repository = repository
        self.directory = directory
        self._locks = locks
        self._notify = notify
        self._clock = clock

    def now(self) -> datetime:
        """MongoDB keeps milliseconds: a snapshot must say what a later read of the contact says."""
        now = self._clock()
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    async def load(self) -> int:
        """Builds the directory from the stored contacts and finishes list renames/deletes a crash cut short."""
        by_tenant: defaultdict[str, list[ContactSnapshot]] = defaultdict(list)
        async for tenant_id, contact in self._repository.all_contacts():
            by_tenant[tenant_id].append(contact)
        for tenant_id, contacts in by_tenant.items():
            self.directory.load(tenant_id, contacts)
        async for tenant_id, list_id, value in self._repository.all_pending_lists():
            await self._finish_list_change(tenant_id, list_id, value, Cause(str(uuid.uuid4())))
        return sum(len(c) for c in by_tenant.values())

    # --- the one way a contact changes ---------------------------------------------------------------------

    async def change(
        self,
        tenant_id: str,
        contact_id: str,
        change: Change,
        cause: Cause,
        *,
        create: Identity | None = None,
        only_if_new: bool = False,
    ) -> Outcome:
        """Applies `change` under the contact's lock; stores the new version and its event in one update.

        `create` (the customer's ids) makes a missing contact; without it a missing contact is a 404.
        """
        key = contact_key(tenant_id, contact_id)
        async with self._locks.hold(key):
            current = await self._repository.get(tenant_id, contact_id)
            now = self.now()
            if current is None:
                if create is None:
                    raise ContactNotFound("contact not found")
                current = domain.new_contact(contact_id, create, now)
            elif only_if_new:
                return Outcome(current, created=False, changed=False)
            new = domain.advance(current, change(current), now)
            if new is None:
                return Outcome(current, created=False, changed=False)
            event = ContactChangedEvent.new(
                tenant_id=tenant_id,
                payload=new,
                occurred_at=now,
                event_id=derived_event_id("contact.changed", tenant_id, contact_id, str(new.version)),
                correlation_id=cause.correlation_id,
                causation_id=cause.causation_id,
                clock=self.now,
            )
            await self._repository.save(tenant_id, new, outbox_entry(event))
            self.directory.put(tenant_id, new)
        self._notify(key)
        return Outcome(new, created=new.version == 1, changed=True)

    # --- contacts ------------------------------------------------------------------------------------------

    async def get(self, tenant_id: str, contact_id: str) -> ContactSnapshot:
        contact = await self._repository.get(tenant_id, contact_id)
        if contact is None:
            raise ContactNotFound("contact not found")
        return contact

    # --- who a customer is ---------------------------------------------------------------------------------

    def _known(self, tenant_id: str) -> Callable[[str], Awaitable[bool]]:
        """Whether a contact keyed by this id exists: contacts made before links were kept are found so."""

        async def known(identity: str) -> bool:
            return await self._repository.get(tenant_id, domain.contact_id_for(tenant_id, identity)) is not None

        return known

    async def contact_id_of(self, tenant_id: str, identity: Identity) -> str:
        """The contact of these ids, linking them (a BSUID to a customer known by phone, every number form)."""
        customer = await self._repository.links.resolve(
            tenant_id, identity.wa_id, identity.user_id, known=self._known(tenant_id)
        )
        return domain.contact_id_for(tenant_id, customer)

    async def find_by_phone(self, tenant_id: str, phone: PhoneNumber) -> ContactSnapshot | None:
        """The contact of any wa_id form of the number."""
        customer = await self._repository.links.find(tenant_id, phone.wa_ids, self._known(tenant_id))
        return await self._repository.get(tenant_id, domain.contact_id_for(tenant_id, customer)) if customer else None

    async def create(
        self, tenant_id: str, phone: PhoneNumber, updates: dict[str, Any], tags: list[str], cause: Cause
    ) -> Outcome:
        """An existing number (in any of its wa_id forms) returns the existing contact untouched."""
        existing = await self.find_by_phone(tenant_id, phone)
        if existing is not None:
            return Outcome(existing, created=False, changed=False)
        definitions = await self._repository.definitions(tenant_id) if updates.get("fields") else {}
        edit = domain.edit(updates, definitions)
        tagging = domain.add_tags(tags)
        customer = await self._repository.links.resolve_ids(tenant_id, phone.wa_ids, phone.wa_id)
        return await self.change(
            tenant_id,
            domain.contact_id_for(tenant_id, customer),
            lambda c: tagging(edit(c)),
            cause,
            create=Identity(phone.wa_id, phone_e164=phone.e164),
            only_if_new=True,
        )

    async def edit(self, tenant_id: str, contact_id: str, updates: dict[str, Any], cause: Cause) -> Outcome:
        definitions = await self._repository.definitions(tenant_id) if "fields" in updates else {}
        return await self.change(tenant_id, contact_id, domain.edit(updates, definitions), cause)

    async def record_message(
        self,
        tenant_id: str,
        identity: Identity,
        profile_name: str | None,
        at: datetime,
        cause: Cause,
        *,
        username: str | None = None,
    ) -> Outcome:
        return await self.change(
            tenant_id,
            await self.contact_id_of(tenant_id, identity),
            domain.seen_message(
                profile_name, at.replace(microsecond=at.microsecond // 1000 * 1000), identity, username
            ),
            cause,
            create=identity,
        )

    async def ensure(self, tenant_id: str, identity: Identity, cause: Cause) -> Outcome:
        """An agent opened a chat: the contact exists afterwards, with any id the chat knows linked to it."""
        return await self.change(
            tenant_id, await self.contact_id_of(tenant_id, identity), domain.link(identity), cause, create=identity
        )

    def search(
        self, tenant_id: str, query: ContactQuery, *, limit: int, cursor: str | None
    ) -> tuple[list[bytes], str | None]:
        """A page of contacts as JSON, straight from the directory (kept in step with every stored change)."""
        try:
            after = decode_cursor(cursor) if cursor else None
        except InvalidCursor as exc:
            raise BadCursor(str(exc)) from exc
        ids = self.directory.page(tenant_id, query, limit=limit + 1, after=after)
        page = [self.directory.json_of(tenant_id, c) for c in ids[:limit]]
        next_cursor = None
        if len(ids) > limit:
            order = self.directory.order_of(tenant_id, ids[limit - 1])
            next_cursor = encode_cursor(order) if order else None
        return page, next_cursor

    # --- dynamic fields ------------------------------------------------------------------------------------

    async def definitions(self, tenant_id: str) -> list[FieldDefinition]:
        return sorted((await self._repository.definitions(tenant_id)).values(), key=lambda d: d.key)

    async def define_field(self, tenant_id: str, definition: FieldDefinition) -> tuple[FieldDefinition, bool]:
        """Adds a field, or re-activates a retired one of the same type (its stored values come back)."""
        definition = domain.check_definition(definition)
        async with self._locks.hold(f"fields:{tenant_id}"):
            definitions = await self._repository.definitions(tenant_id)
            existing = definitions.get(definition.key)
            if existing is not None and not existing.same_shape(definition):
                raise FieldConflict(
                    f"field {definition.key!r} exists as {existing.type.value}"
                    + (f" with options {', '.join(existing.options)}" if existing.options else "")
                )
            active = sum(1 for d in definitions.values() if not d.retired)
            if existing is None and active >= domain.MAX_FIELDS_PER_TENANT:
                raise TooMany(f"a tenant has at most {domain.MAX_FIELDS_PER_TENANT} fields")
            await self._repository.save_definition(tenant_id, definition)
        return definition, existing is None

    async def retire_field(self, tenant_id: str, key: str) -> FieldDefinition:
        async with self._locks.hold(f"fields:{tenant_id}"):
            existing = (await self._repository.definitions(tenant_id)).get(key)
            if existing is None:
                raise FieldNotFound(f"no field {key!r}")
            retired = FieldDefinition(existing.key, existing.label, existing.type, existing.options, retired=True)
            await self._repository.save_definition(tenant_id, retired)
        return retired

    # --- lists ---------------------------------------------------------------------------------------------

    def _view(self, tenant_id: str, list_id: str, value: dict[str, Any]) -> ContactList:
        return ContactList(
            list_id, value["name"], self.directory.member_count(tenant_id, list_id), value.get("created_at")
        )

    async def lists(self, tenant_id: str) -> list[ContactList]:
        lists = await self._repository.lists_of(tenant_id)
        views = [self._view(tenant_id, i, v) for i, v in lists.items() if v.get("pending") != "delete"]
        return sorted(views, key=lambda v: (domain.search_text(v.name), v.list_id))

    async def _live_list(self, tenant_id: str, list_id: str) -> dict[str, Any]:
        value = (await self._repository.lists_of(tenant_id)).get(list_id)
        if value is None or value.get("pending") == "delete":
            raise ListNotFound("list not found")
        return value

    async def get_list(self, tenant_id: str, list_id: str) -> ContactList:
        return self._view(tenant_id, list_id, await self._live_list(tenant_id, list_id))

    def _check_name_free(self, lists: dict[str, dict[str, Any]], name: str, except_id: str | None = None) -> None:
        folded = name.casefold()
        for list_id, value in lists.items():
            if list_id != except_id and value.get("pending") != "delete" and value["name"].casefold() == folded:
                raise ListNameTaken(f"a list named {value['name']!r} exists")

    async def create_list(self, tenant_id: str, raw_name: str) -> ContactList:
        name = domain.normalise_list_name(raw_name)
        async with self._locks.hold(f"lists:{tenant_id}"):
            lists = await self._repository.lists_of(tenant_id)
            self._check_name_free(lists, name)
            if len(lists) >= domain.MAX_LISTS_PER_TENANT:
                raise TooMany(f"a tenant has at most {domain.MAX_LISTS_PER_TENANT} lists")
            list_id = domain.new_list_id()
            value = {"name": name, "created_at": self.now(), "pending": None}
            await self._repository.save_list(tenant_id, list_id, value)
        return self._view(tenant_id, list_id, value)

    async def rename_list(self, tenant_id: str, list_id: str, raw_name: str, cause: Cause) -> ContactList:
        """Every member's snapshot carries the list's name, so each member gets a new version."""
        name = domain.normalise_list_name(raw_name)
        async with self._locks.hold(f"lists:{tenant_id}"):
            lists = await self._repository.lists_of(tenant_id)
            value = await self._live_list(tenant_id, list_id)
            self._check_name_free(lists, name, except_id=list_id)
            value = value | {"name": name, "pending": "rename"}
            await self._repository.save_list(tenant_id, list_id, value)
            await self._finish_list_change(tenant_id, list_id, value, cause)
        return self._view(tenant_id, list_id, value)

    async def delete_list(self, tenant_id: str, list_id: str, cause: Cause) -> None:
        async with self._locks.hold(f"lists:{tenant_id}"):
            value = await self._live_list(tenant_id, list_id)
            value = value | {"pending": "delete"}
            await self._repository.save_list(tenant_id, list_id, value)
            await self._finish_list_change(tenant_id, list_id, value, cause)

    async def _finish_list_change(self, tenant_id: str, list_id: str, value: dict[str, Any], cause: Cause) -> None:
        """Carries a rename or delete to every member, then clears the mark (re-run at start if cut short)."""
        if value.get("pending") == "delete":
            change: Change = domain.leave_list(list_id)
        else:
            change = domain.rename_list(ContactListRef(list_id=list_id, name=value["name"]))
        for contact_id in sorted(self.directory.list_members(tenant_id, list_id)):
            await self.change(tenant_id, contact_id, change, cause)
        if value.get("pending") == "delete":
            await self._repository.drop_list(tenant_id, list_id)
        else:
            await self._repository.save_list(tenant_id, list_id, value | {"pending": None})

    async def set_membership(
        self, tenant_id: str, list_id: str, contact_ids: Iterable[str], *, member: bool, cause: Cause
    ) -> BulkOutcome:
        async with self._locks.hold(f"lists:{tenant_id}"):
            value = await self._live_list(tenant_id, list_id)
            ref = ContactListRef(list_id=list_id, name=value["name"])
            change = domain.join_list(ref) if member else domain.leave_list(list_id)
            changed = unchanged = 0
            not_found: list[str] = []
            for contact_id in dict.fromkeys(contact_ids):
                try:
                    outcome = await self.change(tenant_id, contact_id, change, cause)
                except ContactNotFound:
                    not_found.append(contact_id)
                    continue
                changed += outcome.changed
                unchanged += not outcome.changed
        return BulkOutcome(changed, unchanged, not_found)
