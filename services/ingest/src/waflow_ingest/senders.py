"""Who wrote each message of a batch: `value.contacts[]`, matched to a message by wa_id or by BSUID."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from waflow_ingest.webhook_models import Contact

if TYPE_CHECKING:
    from waflow_ingest.domain import Normalised


class Senders:
    """`value.contacts[]`, matched to a message by wa_id == from, or by user_id == from_user_id; never by index."""

    def __init__(self, out: Normalised, tenant_id: str, raw_contacts: list[Any]) -> None:
        self._by_wa_id: dict[str, Contact] = {}
        self._by_user_id: dict[str, Contact] = {}
        for raw in raw_contacts:
            try:
                contact = raw if isinstance(raw, Contact) else Contact.model_validate(raw)
            except ValidationError as exc:
                # The messages still go on, without this profile; the contact itself is dead-lettered.
                out.fail(tenant_id, "contact", exc, raw)
                continue
            if contact.wa_id:
                self._by_wa_id.setdefault(contact.wa_id, contact)
            if contact.user_id:
                self._by_user_id.setdefault(contact.user_id, contact)

    def of(self, wa_id: str, user_id: str | None) -> Contact | None:
        if user_id and user_id in self._by_user_id:
            return self._by_user_id[user_id]
        contact = self._by_wa_id.get(wa_id) if wa_id else None
        if contact is not None and user_id and contact.user_id and contact.user_id != user_id:
            return None  # the same number under another BSUID is someone else's profile
        return contact
