"""Contact rules without I/O: phone numbers, search keys, tags, field values, versions, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from waflow_common.events.contacts import ContactListRef, ContactSnapshot
from waflow_contacts import domain
from waflow_contacts.domain import FieldDefinition, FieldType, InvalidFieldValue, InvalidPhone, InvalidTag
from waflow_contacts.search import InvalidCursor, decode_cursor, encode_cursor, keys_of, prefixes

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def contact(wa_id: str = "34612345678", **values: object) -> ContactSnapshot:
    base = domain.new_contact(domain.contact_id_for("t", wa_id), domain.Identity(wa_id), NOW)
    new = domain.advance(base, base.model_copy(update=values), NOW)
    assert new is not None
    return new


@pytest.mark.parametrize(
    ("typed", "e164", "wa_id"),
    [
        ("+34 612 34 56 78", "+34612345678", "34612345678"),
        ("0034 612-345-678", "+34612345678", "34612345678"),
        ("34612345678", "+34612345678", "34612345678"),
        ("(+44) 7911 123456", "+447911123456", "447911123456"),
        ("+52 55 1234 5678", "+525512345678", "5215512345678"),
        ("+55 11 98765 4321", "+5511987654321", "5511987654321"),
    ],
)
def test_numbers_normalise_to_e164_and_metas_wa_id(typed: str, e164: str, wa_id: str) -> None:
    number = domain.normalise_phone(typed)
    assert (number.e164, number.wa_id) == (e164, wa_id)


def test_other_wa_id_forms_cover_mexico_and_old_brazilian_accounts() -> None:
    assert domain.normalise_phone("+52 55 1234 5678").other_wa_ids == ("525512345678",)
    assert domain.normalise_phone("+55 11 98765 4321").other_wa_ids == ("551187654321",)


@pytest.mark.parametrize("typed", ["", "+", "abc", "+34 6", "+1 555 765 4321", "+999 1234567"])
def test_invalid_numbers_say_why(typed: str) -> None:
    with pytest.raises(InvalidPhone) as error:
        domain.normalise_phone(typed)
    assert error.value.field == "phone"
    assert error.value.reason


def test_search_text_folds_case_accents_and_punctuation() -> None:
    assert domain.search_text("  José  O'Brien-Müller ") == "jose obrien muller"
    assert domain.search_text("ÅSA Ærø") == "asa ærø"


@pytest.mark.parametrize(
    ("query", "digits"),
    [
        ("+34 612 345 678", "34612345678"),
        ("(612) 345-678", "612345678"),
        ("07911 123456", "7911123456"),
        ("0044 7911", "447911"),
        ("maria", None),
        ("", None),
    ],
)
def test_phone_queries_become_digits(query: str, digits: str | None) -> None:
    assert domain.phone_query_digits(query) == digits


def test_tags_are_normalised_and_bounded() -> None:
    assert domain.normalise_tags(["  VIP Customer ", "vip-customer", "Ñandú"]) == ["vip-customer", "ñandú"]
    for bad in ["", "   ", "x" * 41, "semi;colon"]:
        with pytest.raises(InvalidTag):
            domain.normalise_tag(bad)
    full = contact(tags=[f"t{i}" for i in range(domain.MAX_TAGS_PER_CONTACT)])
    with pytest.raises(InvalidTag):
        domain.add_tags(["one-more"])(full)
    assert domain.add_tags(["t1"])(full) == full


DEFINITIONS = {
    "city": FieldDefinition("city", "City", FieldType.TEXT),
    "orders": FieldDefinition("orders", "Orders", FieldType.NUMBER),
    "birthday": FieldDefinition("birthday", "Birthday", FieldType.DATE),
    "newsletter": FieldDefinition("newsletter", "Newsletter", FieldType.BOOLEAN),
    "tier": FieldDefinition("tier", "Tier", FieldType.CHOICE, ("gold", "silver")),
    "old": FieldDefinition("old", "Old", FieldType.TEXT, retired=True),
}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("city", 1),
        ("orders", True),
        ("orders", "3"),
        ("orders", float("nan")),
        ("birthday", "1990-13-01"),
        ("birthday", "1990-04-12T00:00:00"),
        ("newsletter", 1),
        ("tier", "bronze"),
        ("missing", "x"),
        ("old", "x"),
    ],
)
def test_field_values_are_refused_naming_the_field(key: str, value: object) -> None:
    with pytest.raises(InvalidFieldValue) as error:
        domain.apply_field_values({}, {key: value}, DEFINITIONS)
    assert error.value.field == f"fields.{key}"


def test_field_values_set_clear_and_keep_retired_ones() -> None:
    fields = domain.apply_field_values(
        {"old": "kept", "city": "Sevilla"},
        {"city": None, "orders": 2.5, "birthday": "1990-04-12", "newsletter": False, "tier": "gold"},
        DEFINITIONS,
    )
    assert fields == {"old": "kept", "orders": 2.5, "birthday": "1990-04-12", "newsletter": False, "tier": "gold"}


def test_choice_definitions_need_options_and_others_refuse_them() -> None:
    with pytest.raises(InvalidFieldValue):
        domain.check_definition(FieldDefinition("tier", "Tier", FieldType.CHOICE))
    with pytest.raises(InvalidFieldValue):
        domain.check_definition(FieldDefinition("city", "City", FieldType.TEXT, ("a",)))
    with pytest.raises(InvalidFieldValue):
        domain.check_definition(FieldDefinition("Bad-Key", "x", FieldType.TEXT))


@given(st.lists(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)), min_size=1, max_size=8))
def test_seen_times_are_the_min_and_max_whatever_the_delivery_order(times: list[datetime]) -> None:
    moments = [t.replace(tzinfo=UTC) for t in times]
    current = contact()
    for i, at in enumerate(moments):
        current = domain.seen_message(f"profile {i}", at)(current)
    assert current.first_seen_at == min(moments)
    assert current.last_seen_at == max(moments)
    newest = max(range(len(moments)), key=lambda i: (moments[i], i))  # a tie: the later delivery wins
    assert current.profile_name == f"profile {newest}"


def test_versions_grow_by_one_per_visible_change_only() -> None:
    first = contact()
    assert first.version == 1
    assert domain.advance(first, domain.seen_message(None, NOW)(first), NOW) is not None
    same = domain.seen_message(None, NOW)(first.model_copy(update={"first_seen_at": NOW, "last_seen_at": NOW}))
    stored = first.model_copy(update={"first_seen_at": NOW, "last_seen_at": NOW})
    assert domain.advance(stored, same, NOW + timedelta(seconds=1)) is None
    renamed = domain.advance(stored, domain.edit({"name": "Ana"}, {})(stored), NOW)
    assert renamed is not None
    assert renamed.version == 2


def test_blacklist_keeps_the_first_who_and_when_and_restore_lifts_it() -> None:
    gone = domain.blacklist("agent:a", NOW)(contact())
    again = domain.blacklist("agent:b", NOW + timedelta(hours=1))(gone)
    assert (again.deleted, again.blacklisted, again.deleted_by, again.deleted_at) == (True, True, "agent:a", NOW)
    back = domain.restore(again)
    assert (back.deleted, back.blacklisted, back.deleted_by, back.deleted_at) == (False, False, None, None)


def test_list_membership_rename_and_leave() -> None:
    ref = ContactListRef(list_id="l_1", name="Winter")
    member = domain.join_list(ref)(contact())
    assert domain.join_list(ref)(member).lists == [ref]
    renamed = domain.rename_list(ContactListRef(list_id="l_1", name="Summer"))(member)
    assert renamed.lists[0].name == "Summer"
    assert domain.leave_list("l_1")(renamed).lists == []


def matches(contact: ContactSnapshot, search: str) -> bool:
    """What the database answers for a search: a stored key starts with one of the query's prefixes."""
    wanted = prefixes(search) or []
    return any(k.startswith(p) for k in keys_of(contact) for p in wanted)


def test_search_keys_match_word_runs_of_both_names_and_runs_of_digits() -> None:
    person = contact("34612340049", name="José Álvarez-Ruiz", profile_name="Pro 49")
    assert keys_of(person)[:5] == ["jose alvarez ruiz", "alvarez ruiz", "ruiz", "pro 49", "49"]
    for hit in ["jose", "JOSÉ Álv", "alvarez r", "ruiz", "pro 4", "+34 612 340 049", "(612) 340", "234004", "49"]:
        assert matches(person, hit), hit
    for miss in ["ose", "jose ruiz", "varez", "pro 5", "+34 612 340 048", "!!!"]:
        assert not matches(person, miss), miss
    assert prefixes("!!!") is None


def test_cursors_round_trip_and_refuse_what_the_api_did_not_give() -> None:
    order = ("0jose", "c_1")
    assert decode_cursor(encode_cursor(order)) == order
    for bad in ["not-a-cursor", encode_cursor(order)[:-3], "WzFd"]:
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
