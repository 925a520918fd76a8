"""Who a customer is: Meta's business-scoped user id (BSUID) when it gives one, the wa_id otherwise.

Since 2026 Meta may identify a customer by a BSUID (`contacts[].user_id`, `messages[].from_user_id`,
`statuses[].recipient_user_id`) and send an empty `wa_id`. Everything about one customer of one tenant (Kafka keys,
chats, contacts, the blacklist, sends) is keyed by `customer_id(wa_id, user_id)`. A wa_id is digits only and a BSUID
always holds a non-digit (e.g. "US.13491208655302741918"), so the two kinds of id never collide.
"""

from __future__ import annotations


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
