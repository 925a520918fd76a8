"""Listing, search and filters as MongoDB queries: each contact stores its sort key and normalised search keys.

Search is by prefix over `search_keys`, an array kept on the contact at every write (`keys_of`):
- the folded text (lowercase, accents stripped, see domain.search_text) of the agent's name and of the WhatsApp
  profile name from each word on ("jose maria ruiz" → "jose maria ruiz", "maria ruiz", "ruiz"), so a query
  matches any run of words starting at a word boundary;
- every suffix of the wa_id's digits, so a prefix of a suffix is any run of digits inside the number.
A query's folded text and (when it reads like a phone number) its digits are each a key range
`{"$gte": p, "$lt": p + "\\uffff"}`, matched with `$elemMatch` so one element carries both bounds and the
(tenant_id, deleted, search_keys) index answers it. The order is (name_key, _id), a compound index starting
with the tenant; the cursor is the last contact's (name_key, contact_id).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from waflow_common.events.contacts import ContactSnapshot

from waflow_contacts.domain import phone_query_digits, search_text, sort_key

OrderKey = tuple[str, str]
Filter = dict[str, Any]

KEY_END = "\uffff"


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class ContactQuery:
    search: str | None = None
    tags: tuple[str, ...] = ()
    list_id: str | None = None
    deleted: bool = False


def word_suffixes(text: str) -> list[str]:
    words = text.split(" ") if text else []
    return [" ".join(words[i:]) for i in range(len(words))]


def keys_of(contact: ContactSnapshot) -> list[str]:
    """What a search matches against: word runs of both names, and every run of the number's digits."""
    keys: dict[str, None] = {}
    for name in (contact.name, contact.profile_name):
        keys.update(dict.fromkeys(word_suffixes(search_text(name))))
    digits = contact.wa_id
    keys.update(dict.fromkeys(digits[i:] for i in range(len(digits))))
    return list(keys)


def order_of(contact: ContactSnapshot) -> OrderKey:
    return (sort_key(contact), contact.contact_id)


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


def prefixes(search: str) -> list[str] | None:
    """The key prefixes a search stands for (any of them matches), or None when it can match nothing."""
    text = search_text(search)
    digits = phone_query_digits(search)
    found = [p for p in dict.fromkeys((text, digits)) if p]
    return found or None


def filters(tenant_id: str, query: ContactQuery) -> list[Filter] | None:
    """One filter per search prefix (one without a search); a contact matches when any of them does."""
    base: Filter = {"tenant_id": tenant_id, "deleted": query.deleted}
    if query.tags:
        base["tags"] = {"$all": list(query.tags)} if len(query.tags) > 1 else query.tags[0]
    if query.list_id is not None:
        base["lists.list_id"] = query.list_id
    if not query.search:
        return [base]
    found = prefixes(query.search)
    if found is None:
        return None
    return [base | {"search_keys": {"$elemMatch": {"$gte": p, "$lt": p + KEY_END}}} for p in found]


def after(filter_: Filter, cursor: OrderKey | None, doc_id: str | None) -> Filter:
    """`filter_` restricted to contacts after the cursor in (name_key, _id) order."""
    if cursor is None or doc_id is None:
        return filter_
    name_key, _ = cursor
    # A range on the sort key's first field (an index bound), and the ties up to the cursor left out.
    return filter_ | {"name_key": {"$gte": name_key}, "$nor": [{"name_key": name_key, "_id": {"$lte": doc_id}}]}
