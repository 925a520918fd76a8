"""Contact rules without I/O: phone numbers, search keys, tags, field values, versions, the directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from waflow_common.events.contacts import ContactListRef, ContactSnapshot
from waflow_contacts import domain
from waflow_contacts.domain import FieldDefinition, FieldType, InvalidFieldValue, InvalidPhone, InvalidTag
from waflow_contacts.search import ContactDirectory, ContactQuery, decode_cursor, encode_cursor

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


def test_the_directory_pages_in_a_stable_order_and_filters() -> None:
    directory = ContactDirectory()
    people = [
        contact(f"3461234{i:04d}", name=f"Person {i:03d}", profile_name=f"Pro {i}", tags=["even"] if i % 2 == 0 else [])
        for i in range(50)
    ]
    directory.load("t", people)
    directory.load("other", [contact("34612340000", name="Person 000")])
    seen: list[str] = []
    after = None
    while True:
        page = directory.page("t", ContactQuery(), limit=7, after=after)
        if not page:
            break
        seen += page
        order = directory.order_of("t", page[-1])
        assert order is not None
        after = decode_cursor(encode_cursor(order))
    assert seen == [p.contact_id for p in people]
    evens = directory.page("t", ContactQuery(tags=("even",)), limit=100, after=None)
    assert evens == [p.contact_id for p in people[::2]]
    assert directory.page("t", ContactQuery(search="person 01"), limit=100, after=None) == [
        p.contact_id for p in people[10:20]
    ]
    assert directory.page("t", ContactQuery(search="+34 612 340 049"), limit=5, after=None) == [people[49].contact_id]
    assert directory.page("t", ContactQuery(search="pro 49"), limit=5, after=None) == [people[49].contact_id]
    second = directory.page(
        "t", ContactQuery(search="person 04"), limit=3, after=directory.order_of("t", people[41].contact_id)
    )
    assert second == [p.contact_id for p in people[42:45]]
    renamed = domain.advance(people[0], domain.edit({"name": "Zed"}, {})(people[0]), NOW)
    assert renamed is not None
    directory.put("t", renamed)
    assert directory.page("t", ContactQuery(), limit=100, after=None)[-1] == people[0].contact_id
    directory.put("t", people[0])  # an older version never overwrites a newer one
    assert directory.page("t", ContactQuery(), limit=100, after=None)[-1] == people[0].contact_id
    gone = domain.advance(renamed, domain.blacklist("a", NOW)(renamed), NOW)
    assert gone is not None
    directory.put("t", gone)
    assert directory.page("t", ContactQuery(deleted=True), limit=100, after=None) == [gone.contact_id]
    assert directory.tag_counts("t") == {"even": 24}


def test_a_small_tag_pages_through_its_members_in_order_and_follows_changes() -> None:
    directory = ContactDirectory()
    people = [
        contact(f"3461234{i:04d}", name=f"P {i:03d}", tags=["rare"] if i in (5, 17, 33) else []) for i in range(40)
    ]
    directory.load("t", people)
    first = directory.page("t", ContactQuery(tags=("rare",)), limit=2, after=None)
    assert first == [people[5].contact_id, people[17].contact_id]
    after = directory.order_of("t", first[-1])
    assert directory.page("t", ContactQuery(tags=("rare",)), limit=2, after=after) == [people[33].contact_id]
    untagged = domain.advance(people[17], domain.remove_tag("rare")(people[17]), NOW)
    assert untagged is not None
    directory.put("t", untagged)
    assert directory.page("t", ContactQuery(tags=("rare",)), limit=5, after=None) == [
        people[5].contact_id,
        people[33].contact_id,
    ]
