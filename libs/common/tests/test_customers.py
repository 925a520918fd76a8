"""The one phone-number rule and the customer identity every service uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from waflow_common.customers import (
    InvalidPhoneNumber,
    NoCustomerIdentity,
    customer_id,
    e164_of,
    identities,
    is_bsuid,
    normalise_phone,
    wa_id_forms,
)

BSUID = "US.13491208655302741918"


@pytest.mark.parametrize(
    ("typed", "e164", "wa_ids"),
    [
        ("+34 612 34 56 78", "+34612345678", ("34612345678",)),
        ("0034612345678", "+34612345678", ("34612345678",)),
        ("34612345678", "+34612345678", ("34612345678",)),
        ("(+44) 7911 123456", "+447911123456", ("447911123456",)),
        # Mexico: with or without the 1 after 52 is one number; Meta's ids keep the 1.
        ("+52 55 1234 5678", "+525512345678", ("5215512345678", "525512345678")),
        ("+52 1 55 1234 5678", "+525512345678", ("5215512345678", "525512345678")),
        ("5215512345678", "+525512345678", ("5215512345678", "525512345678")),
        # Brazil: mobiles with or without the ninth digit are one number.
        ("+55 11 98765 4321", "+5511987654321", ("5511987654321", "551187654321")),
        ("+55 11 8765 4321", "+5511987654321", ("5511987654321", "551187654321")),
        ("551187654321", "+5511987654321", ("5511987654321", "551187654321")),
        # A Brazilian landline (8 digits starting 2-5) has no ninth digit.
        ("+55 11 3456 7890", "+551134567890", ("551134567890",)),
    ],
)
def test_every_form_of_a_number_gives_e164_and_all_its_wa_ids(typed: str, e164: str, wa_ids: tuple[str, ...]) -> None:
    number = normalise_phone(typed)
    assert (number.e164, number.wa_ids) == (e164, wa_ids)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "empty"),
        ("+", "not a phone number"),
        ("call me", "only digits"),
        ("+34 6", "too short"),
        ("+999 612345678", "country"),
        ("+3461234567890123", "too long"),
        ("+1 555 765 4321", "not a valid number"),
    ],
)
def test_an_invalid_number_says_why(typed: str, reason: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as error:
        normalise_phone(typed)
    assert reason in error.value.reason


mexican = st.from_regex(r"\A[2-9]\d{9}\Z", fullmatch=True)
brazilian_mobile = st.tuples(
    st.sampled_from(["11", "21", "31", "41", "51", "61", "71", "81"]), st.from_regex(r"\A[6-9]\d{7}\Z")
)


@given(mexican)
def test_both_mexican_forms_lead_to_the_same_wa_ids(national: str) -> None:
    assert wa_id_forms("52" + national) == wa_id_forms("521" + national) == ("521" + national, "52" + national)
    assert e164_of("521" + national) == e164_of("52" + national) == "+52" + national


@given(brazilian_mobile)
def test_both_brazilian_forms_lead_to_the_same_wa_ids(mobile: tuple[str, str]) -> None:
    area, subscriber = mobile
    with_nine, without = f"55{area}9{subscriber}", f"55{area}{subscriber}"
    assert wa_id_forms(with_nine) == wa_id_forms(without) == (with_nine, without)


@given(st.from_regex(r"\A\d{0,16}\Z") | st.from_regex(r"\A5[25]1?\d{9,11}\Z"))
def test_forms_are_closed_every_form_gives_the_same_forms(digits: str) -> None:
    forms = wa_id_forms(digits)
    assert all(wa_id_forms(form) == forms for form in forms)
    assert (forms == ()) == (digits == "")


@given(st.text(max_size=30))
def test_normalising_anything_either_answers_or_says_why(raw: str) -> None:
    reason = None
    try:
        number = normalise_phone(raw)
    except InvalidPhoneNumber as exc:
        reason = exc.reason
    if reason is None:
        assert number.e164.startswith("+")
        assert number.wa_id in wa_id_forms(number.e164)
        assert normalise_phone(number.e164) == number
    else:
        assert reason


def test_the_identity_is_the_bsuid_when_there_is_one() -> None:
    assert customer_id("15557654321", BSUID) == BSUID
    assert customer_id("15557654321", None) == "15557654321"
    assert customer_id("", BSUID) == BSUID
    with pytest.raises(NoCustomerIdentity):
        customer_id("", None)
    assert is_bsuid(BSUID)
    assert not is_bsuid("15557654321")


def test_identities_list_the_bsuid_then_every_form_of_the_number() -> None:
    assert identities("5215512345678", BSUID) == (BSUID, "5215512345678", "525512345678")
    assert identities("", BSUID) == (BSUID,)
    assert identities("", "") == ()
