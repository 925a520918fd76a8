"""The contact book: every change to a contact goes through here and is stored with its event.

A change reads the contact, applies a pure domain change and writes the next version with a compare-and-set on
`version` (repository.replace_if); a writer that lost the race to another instance reads again and re-applies
its change to what won, so nothing is lost and each version exists once (its event id is derived from it).
A deleted contact stays deleted: only `restore` may lift the blacklist, and since every write is conditional on
the version read, a change computed from the contact before its delete can never land after it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from waflow_common.customers import PhoneNumber
from waflow_common.events.contacts import ContactChangedEvent, ContactSnapshot
from waflow_common.events.envelope import Clock, derived_event_id
from waflow_common.outbox import outbox_entry

from waflow_contacts import domain
from waflow_contacts.domain import Change, FieldDefinition, Identity
from waflow_contacts.errors import BadCursor, ContactNotFound, FieldConflict, FieldNotFound, TooMany
from waflow_contacts.repository import CONTACTS, ContactRepository, LostRace, contact_key, snapshot_of
from waflow_contacts.search import ContactQuery, InvalidCursor, after, decode_cursor, encode_cursor, filters, order_of

# Racing writers of one contact each retry until they win; bounded so a bug cannot spin forever.
MAX_ATTEMPTS = 200


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


_BLACKLIST_FIELDS = ("deleted", "blacklisted", "deleted_at", "deleted_by")


class ContactBook:
    def __init__(self, repository: ContactRepository, notify: Callable[[str, str], None], clock: Clock) -> None:
        self._repository = repository
        self._notify = notify
        self._clock = clock

    def now(self) -> datetime:
        """MongoDB keeps milliseconds: a snapshot must say what a later read of the contact says."""
        now = self._clock()
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

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
        restoring: bool = False,
    ) -> Outcome:
        """Applies `change` to the stored contact and stores the new version and its event in one update.

        `create` (the customer's ids) makes a missing contact; without it a missing contact is a 404.
        Only `restoring` may turn a deleted contact back into a live one.
        """
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await self._attempt(tenant_id, contact_id, change, cause, create, only_if_new, restoring)
            except LostRace:
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
        raise RuntimeError(f"contact {contact_id} kept changing under {MAX_ATTEMPTS} attempts")

    async def _attempt(
        self,
        tenant_id: str,
        contact_id: str,
        change: Change,
        cause: Cause,
        create: Identity | None,
        only_if_new: bool,
        restoring: bool,
    ) -> Outcome:
        current = await self._repository.get(tenant_id, contact_id)
        now = self.now()
        if current is None:
            if create is None:
                raise ContactNotFound("contact not found")
            base = domain.new_contact(contact_id, create, now)
        elif only_if_new:
            return Outcome(current, created=False, changed=False)
        else:
            base = current
        changed = change(base)
        if base.deleted and not restoring:
            # The delete wins over anything else: no change but a restore lifts the blacklist.
            changed = changed.model_copy(update={f: getattr(base, f) for f in _BLACKLIST_FIELDS})
        new = domain.advance(base, changed, now)
        if new is None:
            return Outcome(base, created=False, changed=False)
        event = ContactChangedEvent.new(
            tenant_id=tenant_id,
            payload=new,
            occurred_at=now,
            event_id=derived_event_id("contact.changed", tenant_id, contact_id, str(new.version)),
            correlation_id=cause.correlation_id,
            causation_id=cause.causation_id,
            clock=self.now,
        )
        if current is None:
            await self._repository.insert(tenant_id, new, outbox_entry(event))
        else:
            await self._repository.replace_if(tenant_id, new, outbox_entry(event), version=current.version)
        self._notify(CONTACTS, contact_key(tenant_id, contact_id))
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

    async def search(
        self, tenant_id: str, query: ContactQuery, *, limit: int, cursor: str | None
    ) -> tuple[list[bytes], str | None]:
        """A page of contacts as JSON in the listing order, and the cursor of the next page (None at the end)."""
        try:
            position = decode_cursor(cursor) if cursor else None
        except InvalidCursor as exc:
            raise BadCursor(str(exc)) from exc
        wanted = filters(tenant_id, query)
        if wanted is None:
            return [], None
        doc_id = contact_key(tenant_id, position[1]) if position else None
        pages = await asyncio.gather(*(self._repository.page(after(f, position, doc_id), limit + 1) for f in wanted))
        # Several prefixes (a name and a number): each page is in order, so their merge is too.
        merged = {doc["_id"]: doc for page in pages for doc in page}
        docs = sorted(merged.values(), key=lambda d: (d["name_key"], d["_id"]))[: limit + 1]
        contacts = [snapshot_of(d) for d in docs]
        next_cursor = encode_cursor(order_of(contacts[limit - 1])) if len(contacts) > limit else None
        return [c.model_dump_json().encode() for c in contacts[:limit]], next_cursor

    async def tag_counts(self, tenant_id: str) -> dict[str, int]:
        return await self._repository.tag_counts(tenant_id)

    # --- dynamic fields ------------------------------------------------------------------------------------

    async def definitions(self, tenant_id: str) -> list[FieldDefinition]:
        return sorted((await self._repository.definitions(tenant_id)).values(), key=lambda d: d.key)

    async def define_field(self, tenant_id: str, definition: FieldDefinition) -> tuple[FieldDefinition, bool]:
        """Adds a field, or re-activates a retired one of the same type (its stored values come back)."""
        definition = domain.check_definition(definition)
        for _ in range(MAX_ATTEMPTS):
            existing = await self._repository.definition(tenant_id, definition.key)
            if existing is not None and not existing.same_shape(definition):
                raise FieldConflict(
                    f"field {definition.key!r} exists as {existing.type.value}"
                    + (f" with options {', '.join(existing.options)}" if existing.options else "")
                )
            if existing is None:
                # The limit is checked before the insert: two instances adding the last field may both pass.
                if await self._repository.active_fields(tenant_id) >= domain.MAX_FIELDS_PER_TENANT:
                    raise TooMany(f"a tenant has at most {domain.MAX_FIELDS_PER_TENANT} fields")
                if await self._repository.insert_definition(tenant_id, definition):
                    return definition, True
            elif await self._repository.update_definition(tenant_id, definition):
                return definition, False
        raise RuntimeError(f"field {definition.key} kept changing under {MAX_ATTEMPTS} attempts")

    async def retire_field(self, tenant_id: str, key: str) -> FieldDefinition:
        retired = await self._repository.retire_definition(tenant_id, key)
        if retired is None:
            raise FieldNotFound(f"no field {key!r}")
        return retired
