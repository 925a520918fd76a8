"""Identifiers shaped like Meta's: wamids, fbtrace ids, conversation and template ids."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets

_PREFIX = "wamid."


def _wamid(wa_id: str, *, from_business: bool, key: str) -> str:
    # Meta's wamid is a base64 Thrift-compact struct: the user's wa_id, a direction flag and a message key.
    # Rebuilding that layout keeps consumers that peek inside (or just length-check) honest.
    digits = wa_id.encode("ascii")
    raw = b"".join(
        (
            b"\x1c\x18",
            bytes([len(digits)]),
            digits,
            b"\x15\x02\x00",
            b"\x11" if from_business else b"\x12",
            b"\x18",
            bytes([len(key)]),
            key.encode("ascii"),
            b"\x00",
        )
    )
    return _PREFIX + base64.b64encode(raw).decode("ascii")


def inbound_wamid(wa_id: str) -> str:
    """Id of a message a customer wrote (20-character key starting with 3A, like iOS/web clients)."""
    return _wamid(wa_id, from_business=False, key="3A" + os.urandom(9).hex().upper())


def outbound_wamid(wa_id: str) -> str:
    """Id Meta returns for a message the business sent (18-character key)."""
    return _wamid(wa_id, from_business=True, key=os.urandom(9).hex().upper())


def wa_id_of(wamid: str) -> str | None:
    """The customer's wa_id embedded in a Meta-style wamid, or None when it is not one."""
    if not wamid.startswith(_PREFIX):
        return None
    try:
        raw = base64.b64decode(wamid[len(_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 3 or raw[:2] != b"\x1c\x18" or len(raw) < 3 + raw[2]:
        return None
    wa_id = raw[3 : 3 + raw[2]]
    return wa_id.decode("ascii") if wa_id.isdigit() else None


def fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(17)[:22]


def conversation_id() -> str:
    return os.urandom(16).hex()


def template_id(waba_id: str, name: str, language: str) -> str:
    """Stable numeric id, so the default templates keep their ids across resets and restarts."""
    digest = hashlib.sha256(f"{waba_id}/{name}/{language}".encode()).hexdigest()
    return str(10**15 + int(digest[:13], 16) % (9 * 10**15))
