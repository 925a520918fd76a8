"""Contact rules without I/O: phone numbers, search keys, tags, dynamic fields, and how a contact changes."""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from waflow_common import customers
from waflow_common.customers import PhoneNumber
from waflow_common.events.contacts import ContactListRef, ContactSnapshot
from waflow_common.events.envelope import derived_event_id

MAX_TAGS_PER_CONTACT = 50
MAX_TAG_LENGTH = 40
MAX_FIELDS_PER_TENANT = 100
MAX_TEXT_VALUE_LENGTH = 1000
MAX_CHOICE_OPTIONS = 100
MAX_NAME_LENGTH = 200
MAX_LIST_NAME_LENGTH = 80
MAX_LISTS_PER_TENANT = 500


class ContactRuleError(ValueError):
    """Input a rule refuses; `field` names what was wrong so the API can say so."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidPhone(ContactRuleError):
    def __init__(self, reason: str) -> None:
        super().__init__("phone", reason)


class InvalidTag(ContactRuleError):
    def __init__(self, reason: str) -> None:
        super().__init__("tags", reason)


class InvalidFieldValue(ContactRuleError):
    pass


# --- identity -------------------------------------------------------------------------------------------------


def contact_id_for(tenant_id: str, customer: str) -> str:
    """Deterministic, so a redelivered event or a racing create can only ever name one contact.

    `customer` is the key CustomerLinks gives the customer: the wa_id of one who first wrote by phone, the BSUID
    of one who first came with it (the two never collide: a wa_id is digits only)."""
    return "c_" + derived_event_id("contact", tenant_id, customer).hex[:24]


def new_list_id() -> str:
    return "l_" + uuid.uuid4().hex[:16]


_PHONE_CHARS = re.compile(r"^[\d\s+().\-/]+$")
_DIGITS = re.compile(r"\D+")


def normalise_phone(raw: str) -> PhoneNumber:
    """A phone number as typed → E.164 and every wa_id form (waflow_common.customers, the rule of every service)."""
    try:
        return customers.normalise_phone(raw)
    except customers.InvalidPhoneNumber as exc:
        raise InvalidPhone(exc.reason) from exc


# --- search keys ----------------------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[^\w]+")


def search_text(text: str | None) -> str:
    """Lowercase, accents stripped, punctuation folded to single spaces: "José O'Brien" → "jose obrien"."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text.replace("'", "").replace("\u2019", ""))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(_NOT_WORD.sub(" ", bare).replace("_", " ").split())


def phone_query_digits(query: str) -> str | None:
    """The digits of a query written like a phone number ("+1 (555) 765-4321", "0034 612…"), else None."""
    text = query.strip()
    if not text or not _PHONE_CHARS.match(text):
        return None
    digits = _DIGITS.sub("", text)
    if text.startswith("00"):
        digits = digits[2:]
    elif not text.startswith("+"):
        # A national number's trunk zero ("07911 123456") is not part of the international form.
        digits = digits.lstrip("0")
    return digits or None


def display_name(contact: ContactSnapshot) -> str | None:
    return contact.name or contact.profile_name


def sort_key(contact: ContactSnapshot) -> str:
    """Named contacts first, alphabetically (accent-insensitive); unnamed ones after them, by number."""
    name = search_text(display_name(contact))
    return f"0{name}" if name else f"1{contact.wa_id}"


def haystack(contact: ContactSnapshot) -> str:
    """What a name search matches against: both the agent's name and the WhatsApp profile name."""
    return "\n".join(filter(None, (search_text(contact.name), search_text(contact.profile_name))))


# --- tags -----------------------------------------------------------------------------------------------------


def normalise_tag(raw: str) -> str:
    """ "  VIP Customer " → "vip-customer": case-folded, inner spaces to hyphens, bounded."""
    tag = "-".join(unicodedata.normalize("NFKC", raw).casefold().split())
    if not tag:
        raise InvalidTag("a tag cannot be empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidTag(f"a tag has at most {MAX_TAG_LENGTH} characters: {tag[:MAX_TAG_LENGTH]}…")
    if any(not (c.isalnum() or c in "-_.:/&+#") for c in tag):
        raise InvalidTag(f"{tag!r}: only letters, digits and - _ . : / & + # are allowed")
    return tag


def normalise_tags(raw: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(normalise_tag(t) for t in raw))


# --- dynamic fields -------------------------------------------------------------------------------------------


class FieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    BOOLEAN = "boolean"
    CHOICE = "choice"


FIELD_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class FieldDefinition:
    key: str
    label: str
    type: FieldType
    options: tuple[str, ...] = ()
    retired: bool = False

    def same_shape(self, other: FieldDefinition) -> bool:
        return (self.type, self.options) == (other.type, other.options)


def check_definition(definition: FieldDefinition) -> FieldDefinition:
    if not FIELD_KEY.match(definition.key):
        raise InvalidFieldValue("key", "lowercase letters, digits and _, starting with a letter, at most 40")
    if not definition.label.strip():
        raise InvalidFieldValue("label", "cannot be empty")
    if definition.type is FieldType.CHOICE:
        options = tuple(dict.fromkeys(o.strip() for o in definition.options if o.strip()))
        if not options:
            raise InvalidFieldValue("options", "a choice field needs at least one option")
        if len(options) > MAX_CHOICE_OPTIONS:
            raise InvalidFieldValue("options", f"at most {MAX_CHOICE_OPTIONS} options")
        return FieldDefinition(definition.key, definition.label.strip(), definition.type, options, definition.retired)
    if definition.options:
        raise InvalidFieldValue("options", "only choice fields have options")
    return FieldDefinition(definition.key, definition.label.strip(), definition.type, (), definition.retired)


def field_value(definition: FieldDefinition, value: Any) -> Any:
    """The value as stored, or InvalidFieldValue naming the field."""
    key = f"fields.{definition.key}"
    match definition.type:
        case FieldType.TEXT:
            if not isinstance(value, str):
                raise InvalidFieldValue(key, "expected text")
            if len(value) > MAX_TEXT_VALUE_LENGTH:
                raise InvalidFieldValue(key, f"at most {MAX_TEXT_VALUE_LENGTH} characters")
            return value
        case FieldType.NUMBER:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidFieldValue(key, "expected a number")
            return value
        case FieldType.BOOLEAN:
            if not isinstance(value, bool):
                raise InvalidFieldValue(key, "expected true or false")
            return value
        case FieldType.DATE:
            if not isinstance(value, str):
                raise InvalidFieldValue(key, "expected a date as YYYY-MM-DD")
            try:
                return date.fromisoformat(value).isoformat() if len(value) == 10 else _bad_date(key)
            except ValueError:
                return _bad_date(key)
        case FieldType.CHOICE:
            if value not in definition.options:
                raise InvalidFieldValue(key, f"expected one of {', '.join(definition.options)}")
            return value


def _bad_date(key: str) -> Any:
    raise InvalidFieldValue(key, "expected a date as YYYY-MM-DD")


def apply_field_values(
    current: Mapping[str, Any], updates: Mapping[str, Any], definitions: Mapping[str, FieldDefinition]
) -> dict[str, Any]:
    """Sets or (with None) clears values; values of retired fields stay stored but cannot be written."""
    fields = dict(current)
    for key, value in updates.items():
        definition = definitions.get(key)
        if definition is None:
            raise InvalidFieldValue(f"fields.{key}", "no such field is defined")
        if definition.retired:
            raise InvalidFieldValue(f"fields.{key}", "this field is retired")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = field_value(definition, value)
    return fields


# --- how a contact changes ------------------------------------------------------------------------------------

Change = Callable[[ContactSnapshot], ContactSnapshot]


@dataclass(frozen=True)
class Identity:
    """The ids a message or a chat gives for its customer: a number (wa_id, may be empty) and/or a BSUID."""

    wa_id: str
    user_id: str | None = None
    phone_e164: str | None = None

    @property
    def e164(self) -> str | None:
        return self.phone_e164 or customers.e164_of(self.wa_id)


def new_contact(contact_id: str, identity: Identity, now: datetime) -> ContactSnapshot:
    """A contact before its first change; `version` 0 so the first stored state is version 1."""
    return ContactSnapshot(
        contact_id=contact_id,
        wa_id=identity.wa_id,
        user_id=identity.user_id,
        phone_e164=identity.e164,
        updated_at=now,
        version=0,
    )


def link(identity: Identity) -> Change:
    """Ids learnt later join the contact: a BSUID for a customer known by phone, a number for a BSUID-only one.

    The ids the contact has stay (the wa_id Meta first gave is what sends go to)."""

    def change(contact: ContactSnapshot) -> ContactSnapshot:
        values: dict[str, Any] = {}
        if identity.user_id and not contact.user_id:
            values["user_id"] = identity.user_id
        if identity.wa_id and not contact.wa_id:
            values |= {"wa_id": identity.wa_id, "phone_e164": identity.e164}
        return contact.model_copy(update=values) if values else contact

    return change


def advance(old: ContactSnapshot, new: ContactSnapshot, now: datetime) -> ContactSnapshot | None:
    """The next version, or None when nothing a consumer can see changed (a redelivery, a repeated command)."""
    ignored = {"updated_at", "version"}
    if old.version > 0 and old.model_dump(exclude=ignored) == new.model_dump(exclude=ignored):
        return None
    return new.model_copy(update={"updated_at": now, "version": old.version + 1})


def seen_message(
    profile_name: str | None, at: datetime, identity: Identity | None = None, username: str | None = None
) -> Change:
    """A customer wrote: first/last seen move, the newest message's profile name and username are kept, and ids
    the message brings join the contact (see `link`).

    The agent's `name` is a separate field, so a profile name never overwrites it. A blacklisted contact's
    message is recorded the same way and the blacklist stays.
    """

    def change(contact: ContactSnapshot) -> ContactSnapshot:
        if identity is not None:
            contact = link(identity)(contact)
        first = contact.first_seen_at
        last = contact.last_seen_at
        newest = last is None or at >= last
        return contact.model_copy(
            update={
                "first_seen_at": at if first is None or at < first else first,
                "last_seen_at": at if newest else last,
                "profile_name": (profile_name or contact.profile_name) if newest else contact.profile_name,
                "username": (username or contact.username) if newest else contact.username,
            }
        )

    return change


def unchanged(contact: ContactSnapshot) -> ContactSnapshot:
    return contact


def edit(updates: Mapping[str, Any], definitions: Mapping[str, FieldDefinition]) -> Change:
    """Master data from the API: `name` (None clears it) and dynamic field values."""

    def change(contact: ContactSnapshot) -> ContactSnapshot:
        values: dict[str, Any] = {}
        if "name" in updates:
            name = (updates["name"] or "").strip() or None
            if name is not None and len(name) > MAX_NAME_LENGTH:
                raise ContactRuleError("name", f"at most {MAX_NAME_LENGTH} characters")
            values["name"] = name
        if "fields" in updates:
            values["fields"] = apply_field_values(contact.fields, updates["fields"] or {}, definitions)
        return contact.model_copy(update=values)

    return change


def add_tags(tags: Iterable[str]) -> Change:
    wanted = normalise_tags(tags)

    def change(contact: ContactSnapshot) -> ContactSnapshot:
        merged = list(dict.fromkeys([*contact.tags, *wanted]))
        if len(merged) > MAX_TAGS_PER_CONTACT:
            raise InvalidTag(f"a contact has at most {MAX_TAGS_PER_CONTACT} tags")
        return contact.model_copy(update={"tags": merged})

    return change


def remove_tag(tag: str) -> Change:
    unwanted = normalise_tag(tag)
    return lambda contact: contact.model_copy(update={"tags": [t for t in contact.tags if t != unwanted]})


def join_list(ref: ContactListRef) -> Change:
    def change(contact: ContactSnapshot) -> ContactSnapshot:
        others = [r for r in contact.lists if r.list_id != ref.list_id]
        kept = next((r for r in contact.lists if r.list_id == ref.list_id), None)
        return contact.model_copy(update={"lists": [*others, ref] if kept != ref else contact.lists})

    return change


def leave_list(list_id: str) -> Change:
    return lambda contact: contact.model_copy(update={"lists": [r for r in contact.lists if r.list_id != list_id]})


def rename_list(ref: ContactListRef) -> Change:
    def change(contact: ContactSnapshot) -> ContactSnapshot:
        lists = [ref if r.list_id == ref.list_id else r for r in contact.lists]
        return contact.model_copy(update={"lists": lists})

    return change


def blacklist(by: str, now: datetime) -> Change:
    """Deleting keeps the record and blacklists the number; deleting again keeps the first who/when."""

    def change(contact: ContactSnapshot) -> ContactSnapshot:
        if contact.deleted:
            return contact
        return contact.model_copy(update={"deleted": True, "blacklisted": True, "deleted_at": now, "deleted_by": by})

    return change


def restore(contact: ContactSnapshot) -> ContactSnapshot:
    return contact.model_copy(update={"deleted": False, "blacklisted": False, "deleted_at": None, "deleted_by": None})


def normalise_list_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name:
        raise ContactRuleError("name", "a list name cannot be empty")
    if len(name) > MAX_LIST_NAME_LENGTH:
        raise ContactRuleError("name", f"at most {MAX_LIST_NAME_LENGTH} characters")
    return name
