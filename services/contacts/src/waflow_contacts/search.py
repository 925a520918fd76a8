"""The in-memory contact directory that answers listing, search, filters and counts.

Why in memory: FerretDB v1 on SQLite pushes only an exact `_id` filter down to SQLite. Every other find
(indexed or not, regex or equality) reads and decodes every document of the collection: about 8 s for 110k
contacts on our 2 cores (bench/contacts measures it). So MongoDB stays the source of truth, read and written
by `_id` only, and this directory holds what a listing needs (sort key, folded name, digits, tags, lists, deleted,
and the contact's JSON), built from the stored contacts at start and updated after every stored change.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from waflow_common.events.contacts import ContactSnapshot

from waflow_contacts.domain import haystack, phone_query_digits, search_text, sort_key

OrderKey = tuple[str, str]


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    contact_id: str
    order: OrderKey
    text: str
    digits: str
    tags: frozenset[str]
    lists: frozenset[str]
    deleted: bool
    version: int
    # The contact as the API shows it: a listing page is answered from memory, with no read per contact
    # (each read by _id costs a table scan on FerretDB v1, see repository.py).
    json: bytes


@dataclass(frozen=True)
class ContactQuery:
    search: str | None = None
    tags: tuple[str, ...] = ()
    list_id: str | None = None
    deleted: bool = False


@dataclass(frozen=True)
class _Haystack:
    """Every contact's searchable text on one line, in listing order: one C-level `str.find` walks a tenant."""

    text: str
    starts: list[int]

    @classmethod
    def build(cls, tenant: _Tenant) -> _Haystack:
        # One line per contact: the name/profile separator must not be a line break.
        lines = [
            f"{tenant.entries[c].text.replace(chr(10), chr(1))}\t{tenant.entries[c].digits}" for _, c in tenant.order
        ]
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line) + 1)
        return cls("\n".join(lines), starts)

    def lines_with(self, needle: str, first_line: int) -> Iterator[int]:
        """Indexes (into the listing order) of the lines that contain `needle`, in order."""
        position = self.starts[first_line]
        while (found := self.text.find(needle, position)) >= 0:
            line = bisect.bisect_right(self.starts, found) - 1
            yield line
            position = self.starts[line + 1]


@dataclass
class _Tenant:
    haystack: _Haystack | None = None
    sorted_members: dict[tuple[str, str], list[OrderKey]] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    order: list[OrderKey] = field(default_factory=list)
    by_tag: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    by_list: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def entry_for(contact: ContactSnapshot) -> Entry:
    return Entry(
        contact_id=contact.contact_id,
        order=(sort_key(contact), contact.contact_id),
        text=haystack(contact),
        digits=contact.wa_id,
        tags=frozenset(contact.tags),
        lists=frozenset(r.list_id for r in contact.lists),
        deleted=contact.deleted,
        version=contact.version,
        json=contact.model_dump_json().encode(),
    )


def encode_cursor(order: OrderKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(order).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> OrderKey:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("not a cursor this API returned") from exc
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(p, str) for p in raw)):
        raise InvalidCursor("not a cursor this API returned")
    return (raw[0], raw[1])


class ContactDirectory:
    """Per tenant: entries by id, one sorted order (stable: sort key, then id), and tag/list memberships."""

    def __init__(self) -> None:
        self._tenants: defaultdict[str, _Tenant] = defaultdict(_Tenant)

    def load(self, tenant_id: str, contacts: Iterable[ContactSnapshot]) -> None:
        tenant = self._tenants[tenant_id]
        for contact in contacts:
            self._put(tenant, entry_for(contact), sort=False)
        tenant.order.sort()
        tenant.haystack = _Haystack.build(tenant)  # so the first search after a start is not the slow one

    def put(self, tenant_id: str, contact: ContactSnapshot) -> None:
        self._put(self._tenants[tenant_id], entry_for(contact), sort=True)

    def _put(self, tenant: _Tenant, entry: Entry, *, sort: bool) -> None:
        old = tenant.entries.get(entry.contact_id)
        if old is not None and old.version >= entry.version:
            return
        tenant.haystack = None  # rebuilt by the next search
        tenant.sorted_members.clear()
        if old is not None:
            if sort:
                del tenant.order[bisect.bisect_left(tenant.order, old.order)]
            else:
                tenant.order.remove(old.order)
            for tag in old.tags - entry.tags:
                tenant.by_tag[tag].discard(entry.contact_id)
            for list_id in old.lists - entry.lists:
                tenant.by_list[list_id].discard(entry.contact_id)
        tenant.entries[entry.contact_id] = entry
        if sort:
            bisect.insort(tenant.order, entry.order)
        else:
            tenant.order.append(entry.order)
        for tag in entry.tags:
            tenant.by_tag[tag].add(entry.contact_id)
        for list_id in entry.lists:
            tenant.by_list[list_id].add(entry.contact_id)

    def page(self, tenant_id: str, query: ContactQuery, *, limit: int, after: OrderKey | None) -> list[str]:
        """Up to `limit` contact ids in the stable order, after the cursor's position."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return []
        text = search_text(query.search) if query.search else ""
        digits = phone_query_digits(query.search) if query.search else None
        if query.search and not text and not digits:
            return []

        def matches(entry: Entry) -> bool:
            if entry.deleted != query.deleted:
                return False
            if query.tags and not entry.tags.issuperset(query.tags):
                return False
            if query.list_id is not None and query.list_id not in entry.lists:
                return False
            if query.search:
                return bool((text and text in entry.text) or (digits and digits in entry.digits))
            return True

        narrowest = self._narrowest(tenant, query)
        entries = tenant.entries
        start = 0 if after is None else bisect.bisect_right(tenant.order, after)
        ordered: Iterable[OrderKey]
        if narrowest is not None and len(narrowest[1]) * 2 < len(tenant.order):
            # A tag or list much smaller than the tenant: walk its members, in order (sorted once per change).
            key, members = narrowest
            in_order = tenant.sorted_members.get(key)
            if in_order is None:
                in_order = tenant.sorted_members[key] = sorted(entries[c].order for c in members)
            first = 0 if after is None else bisect.bisect_right(in_order, after)
            ordered = itertools.islice(in_order, first, None)
        elif query.search:
            if tenant.haystack is None:
                tenant.haystack = _Haystack.build(tenant)
            haystack = tenant.haystack
            needles = [n for n in dict.fromkeys((text, digits)) if n]
            lines = heapq.merge(*(haystack.lines_with(n, start) for n in needles))
            ordered = (tenant.order[i] for i, _ in itertools.groupby(lines))
        else:
            ordered = itertools.islice(tenant.order, start, None)
        out: list[str] = []
        for _, contact_id in ordered:
            if matches(entries[contact_id]):
                out.append(contact_id)
                if len(out) == limit:
                    break
        return out

    def _narrowest(self, tenant: _Tenant, query: ContactQuery) -> tuple[tuple[str, str], set[str]] | None:
        sets = [(("tag", t), tenant.by_tag.get(t, set())) for t in query.tags]
        if query.list_id is not None:
            sets.append((("list", query.list_id), tenant.by_list.get(query.list_id, set())))
        return min(sets, key=lambda s: len(s[1])) if sets else None

    def json_of(self, tenant_id: str, contact_id: str) -> bytes:
        return self._tenants[tenant_id].entries[contact_id].json

    def order_of(self, tenant_id: str, contact_id: str) -> OrderKey | None:
        entry = self._tenants[tenant_id].entries.get(contact_id)
        return entry.order if entry else None

    def tag_counts(self, tenant_id: str) -> dict[str, int]:
        """Contacts per tag, deleted contacts not counted (they are out of the normal listing)."""
        tenant = self._tenants[tenant_id]
        counts = {tag: sum(1 for c in ids if not tenant.entries[c].deleted) for tag, ids in tenant.by_tag.items()}
        return {tag: n for tag, n in sorted(counts.items()) if n}

    def list_members(self, tenant_id: str, list_id: str) -> set[str]:
        return set(self._tenants[tenant_id].by_list.get(list_id, ()))

    def member_count(self, tenant_id: str, list_id: str) -> int:
        """Members the list's normal listing shows (deleted contacts are not counted)."""
        tenant = self._tenants[tenant_id]
        return sum(1 for c in tenant.by_list.get(list_id, ()) if not tenant.entries[c].deleted)

    def size(self, tenant_id: str) -> int:
        return len(self._tenants[tenant_id].entries)
