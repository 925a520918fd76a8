"""Who a customer is: Meta's business-scoped user id (BSUID) when it gives one, the wa_id otherwise; one rule for
phone numbers in every service; and the links that keep one customer one record when a second id appears.

Since 2026 Meta may identify a customer by a BSUID (`contacts[].user_id`, `messages[].from_user_id`,
`statuses[].recipient_user_id`) and send an empty `wa_id`. Everything about one customer of one tenant (Kafka keys,
chats, contacts, the blacklist, sends) is keyed by the customer's identity. A wa_id is digits only and a BSUID
always holds a non-digit (e.g. "US.13491208655302741918"), so the two kinds of id never collide.

One number can also have several wa_ids: Meta warns the WhatsApp id may differ from the dialled number, and
Mexican mobiles (with or without the "1" after 52) and Brazilian mobiles (with or without the ninth digit) are
seen in both forms. `wa_id_forms` lists them all, so that a lookup or a blacklist check covers every form.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

log = logging.getLogger(__name__)

_DUPLICATE = 11000


class NoCustomerIdentity(ValueError):
    """Neither a wa_id nor a BSUID: nobody to attribute the message to or to send to."""


def customer_id(wa_id: str | None, user_id: str | None = None) -> str:
    """The customer's identity: the BSUID when present, the wa_id otherwise."""
    if user_id:
        return user_id
    if wa_id:
        return wa_id
    raise NoCustomerIdentity("neither a wa_id nor a business-scoped user id")


def is_bsuid(identity: str) -> bool:
    """True for a business-scoped user id, False for a wa_id (digits only)."""
    return not identity.isdigit()


# --- phone numbers -------------------------------------------------------------------------------------------


class InvalidPhoneNumber(ValueError):
    """A number as typed that is not an international phone number; `reason` says why, for the API's answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PhoneNumber:
    e164: str
    wa_id: str = ""  # the form WhatsApp most likely uses (see wa_id_forms)
    # Other wa_ids WhatsApp may use for the same number.
    other_wa_ids: tuple[str, ...] = ()

    @property
    def wa_ids(self) -> tuple[str, ...]:
        return (self.wa_id, *self.other_wa_ids)


_PHONE_CHARS = re.compile(r"^[\d\s+().\-/]+$")
_NOT_DIGITS = re.compile(r"\D+")

_POSSIBLE_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country calling code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "invalid length for its country",
}

_PARSE_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country calling code",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


def wa_id_forms(wa_id: str) -> tuple[str, ...]:
    """Every wa_id one number can have, the form WhatsApp most likely uses first; () for no number.

    Mexican mobiles: "52" + 10 digits and "521" + 10 digits are one number (Meta's ids keep the old "1").
    Brazilian mobiles: "55" + area + "9" + 8 digits and the same without the 9 (accounts older than the ninth
    digit); the 8 digits of a mobile start with 6 to 9 (landlines start with 2 to 5), so only those have two forms.
    Accepts any form (a wa_id from Meta, or E.164 digits), so all forms give the same answer.
    """
    digits = _NOT_DIGITS.sub("", wa_id or "")
    if not digits:
        return ()
    if digits.startswith("521") and len(digits) == 13:
        return (digits, "52" + digits[3:])
    if digits.startswith("52") and len(digits) == 12:
        return ("521" + digits[2:], digits)
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9" and digits[5] in "6789":
        return (digits, digits[:4] + digits[5:])
    if digits.startswith("55") and len(digits) == 12 and digits[4] in "6789":
        return (digits[:4] + "9" + digits[4:], digits)
    return (digits,)


def _e164_candidate(forms: tuple[str, ...]) -> str:
    """The form the numbering plan knows: Mexico without the 1 after 52, Brazil with the ninth digit."""
    if forms[0].startswith("521") and len(forms[0]) == 13:
        return forms[1]
    return forms[0]


def normalise_phone(raw: str) -> PhoneNumber:
    """A phone number as typed ("+44 7911 123456", "0044…", "447911123456") → E.164 and every wa_id form.

    Without a country there is no way to read a national number, so the number must be international: a
    leading +, a 00 prefix, or Meta's bare-digits form. It must be a valid number for its country (the
    `phonenumbers` library's plan), so a typing mistake is refused here rather than by WhatsApp later.
    Raises InvalidPhoneNumber saying why.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("empty")
    if not _PHONE_CHARS.match(text):
        raise InvalidPhoneNumber("only digits, spaces, +, (, ), -, . and / are allowed")
    digits = _NOT_DIGITS.sub("", text)
    if text.lstrip("(").startswith("00"):
        digits = digits[2:]
    if not digits:
        raise InvalidPhoneNumber("not a phone number")
    forms = wa_id_forms(digits)
    try:
        parsed = phonenumbers.parse("+" + _e164_candidate(forms), None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(_PARSE_REASONS.get(exc.error_type, "not a phone number")) from exc
    possible = phonenumbers.is_possible_number_with_reason(parsed)
    if possible in _POSSIBLE_REASONS:
        raise InvalidPhoneNumber(_POSSIBLE_REASONS[possible])
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber("not a valid number for its country")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    forms = wa_id_forms(e164[1:])
    return PhoneNumber(e164=e164, wa_id=forms[0], other_wa_ids=forms[1:])


def e164_of(wa_id: str) -> str | None:
    """The number a wa_id stands for, in E.164 (Mexico without the old 1); None for no number."""
    forms = wa_id_forms(wa_id)
    return "+" + _e164_candidate(forms) if forms else None


def identities(wa_id: str | None, user_id: str | None = None) -> tuple[str, ...]:
    """Every id the customer may be known by: the BSUID first, then every form of the wa_id."""
    ids = (user_id,) if user_id else ()
    return ids + wa_id_forms(wa_id or "")


# --- links between a customer's ids ----------------------------------------------------------------------------

Known = Callable[[str], Awaitable[bool]]


class CustomerLinks:
    """Which stored customer an id belongs to, so one customer keeps one chat and one contact whatever id comes.

    One document per (tenant, id): `_id` = "<tenant_id>:<id>", with `customer` (the identity the customer's
    records are keyed by), `tenant_id` and `kind` ("user_id" or "wa_id"). A link is only ever inserted, never
    changed: the first writer wins (a unique `_id`), a racing writer reads the winner. So a customer who first
    wrote by phone keeps the wa_id as their key when a BSUID appears, and every form of one number leads to the
    same customer. Because links never change, the kept copies can never be stale; they are bounded so that
    memory does not grow with the number of customers.

    Known limit: two records made before anything linked them (a BSUID-only customer and, separately, the same
    person by phone) stay two; the BSUID's record is used from then on. A phone number that Meta gives to a new
    person later still leads to the old customer while the number is the only id in a message.
    """

    def __init__(self, collection: AsyncCollection[dict[str, Any]], *, keep: int = 100_000) -> None:
        self._links = collection
        self._kept: OrderedDict[str, str] = OrderedDict()
        self._keep = keep

    async def _lookup(self, tenant_id: str, ids: tuple[str, ...]) -> dict[str, str]:
        """id → customer for the ids that have a link; one read for those not kept."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for identity in ids:
            kept = self._kept.get(f"{tenant_id}:{identity}")
            if kept is None:
                missing.append(f"{tenant_id}:{identity}")
            else:
                found[identity] = kept
        if missing:
            async for doc in self._links.find({"_id": {"$in": missing}}):
                self._keep_link(doc["_id"], str(doc["customer"]))
                found[doc["_id"][len(tenant_id) + 1 :]] = str(doc["customer"])
        return found

    def _keep_link(self, link_id: str, customer: str) -> None:
        self._kept[link_id] = customer
        self._kept.move_to_end(link_id)
        while len(self._kept) > self._keep:
            self._kept.popitem(last=False)

    async def _winner(self, tenant_id: str, identity: str) -> str:
        """The customer a link that just refused ours names. The refusing write may not be visible to this
        connection yet (seen on the local server under concurrent inserts), so it is read again briefly."""
        for attempt in range(50):
            winner = (await self._lookup(tenant_id, (identity,))).get(identity)
            if winner is not None:
                return winner
            await asyncio.sleep(0.01 * (attempt + 1))
        raise RuntimeError(f"a link refused as a duplicate cannot be read back: {tenant_id}:<{identity[:2]}…>")

    async def find(self, tenant_id: str, ids: tuple[str, ...], known: Known | None = None) -> str | None:
        """The customer one of `ids` is linked to (in order), else the first id `known` says has records."""
        linked = await self._lookup(tenant_id, ids)
        for identity in ids:
            if identity in linked:
                return linked[identity]
        if known is not None:
            # Records made before links existed are keyed by the wa_id Meta sent.
            for identity in ids:
                if await known(identity):
                    return identity
        return None

    async def resolve(
        self, tenant_id: str, wa_id: str | None, user_id: str | None = None, *, known: Known | None = None
    ) -> str:
        """The customer's key: the linked customer if any id has one, else a new one (the BSUID when present, the
        wa_id otherwise, as Meta sent it). Links every id of theirs to it. Raises NoCustomerIdentity without ids."""
        return await self.resolve_ids(tenant_id, identities(wa_id, user_id), customer_id(wa_id, user_id), known)

    async def resolve_ids(self, tenant_id: str, ids: tuple[str, ...], fresh: str, known: Known | None = None) -> str:
        """As `resolve`, for ids already listed (e.g. every form of a typed number), `fresh` naming a new customer."""
        customer = await self.find(tenant_id, ids, known) or fresh
        # Numbers first: a racing writer who holds the number decides before this writer's BSUID link is stored.
        pending = sorted((i for i in ids if self._kept.get(f"{tenant_id}:{i}") != customer), key=is_bsuid)
        stored_any = False
        while pending:
            docs = [
                {
                    "_id": f"{tenant_id}:{identity}",
                    "tenant_id": tenant_id,
                    "customer": customer,
                    "kind": "user_id" if is_bsuid(identity) else "wa_id",
                }
                for identity in pending
            ]
            try:
                await self._links.insert_many(docs, ordered=True)  # one write for all of them
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or [{}]
                if errors[0].get("code") != _DUPLICATE:
                    raise
                at = int(errors[0]["index"])
            else:
                at = len(docs)
            for doc in docs[:at]:
                self._keep_link(doc["_id"], customer)
            stored_any = stored_any or at > 0
            if at == len(docs):
                break
            taken = pending[at]
            winner = await self._winner(tenant_id, taken)
            if winner != customer:
                if not stored_any and customer == fresh:
                    customer = winner  # a racing writer made this customer first: join it
                else:
                    log.warning(
                        "a customer id is linked to another customer; keeping both records",
                        extra={"tenant_id": tenant_id, "kind": docs[at]["kind"]},
                    )
            pending = pending[at + 1 :]
        return customer
