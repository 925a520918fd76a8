"""How ids join a contact, without any server."""

from __future__ import annotations

from datetime import UTC, datetime

from waflow_contacts import domain
from waflow_contacts.domain import Identity

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_a_bsuid_joins_a_contact_known_by_phone_and_a_number_joins_a_bsuid_only_one() -> None:
    by_phone = domain.new_contact("c1", Identity("5215512345678"), NOW)
    assert by_phone.phone_e164 == "+525512345678"
    linked = domain.seen_message("Ana", NOW, Identity("5215512345678", "MX.1"), "ana")(by_phone)
    assert (linked.wa_id, linked.user_id, linked.username) == ("5215512345678", "MX.1", "ana")

    bsuid_only = domain.new_contact("c2", Identity("", "MX.2"), NOW)
    assert (bsuid_only.wa_id, bsuid_only.phone_e164) == ("", None)
    numbered = domain.link(Identity("34612345678", "MX.2"))(bsuid_only)
    assert (numbered.wa_id, numbered.phone_e164, numbered.user_id) == ("34612345678", "+34612345678", "MX.2")


def test_ids_a_contact_has_are_kept() -> None:
    contact = domain.new_contact("c1", Identity("34612345678", "ES.1"), NOW)
    assert domain.link(Identity("", "ES.9"))(contact) == contact
    assert domain.link(Identity("34699999999"))(contact) == contact
