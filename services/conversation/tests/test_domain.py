"""The pure rules: delivery status ordering and the 24-hour window (property-based), ids, phones, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from waflow_conversation import domain
from waflow_conversation.domain import DeliveryState, StatusReport

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
ACCEPTED = DeliveryState("accepted", T0)

reports = st.builds(
    StatusReport,
    status=st.sampled_from(["sent", "delivered", "read", "played", "failed", "deleted"]),
    at=st.integers(min_value=0, max_value=600).map(lambda s: T0 + timedelta(seconds=s)),
)


def fold(lifecycle: DeliveryState, arrivals: list[StatusReport]) -> list[DeliveryState]:
    """What the chat shows after each arrival, applying them one by one as the consumer does."""
    seen: list[StatusReport] = []
    shown = []
    for report in arrivals:
        seen.append(report)
        shown.append(domain.delivery_state(lifecycle, seen))
    return shown


@given(st.lists(reports, max_size=8), st.randoms())
def test_any_order_and_any_duplication_end_in_the_same_status(arrivals: list[StatusReport], rnd: object) -> None:
    shuffled = arrivals + arrivals[: len(arrivals) // 2]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert domain.delivery_state(ACCEPTED, shuffled) == domain.delivery_state(ACCEPTED, arrivals)


@given(st.lists(reports.filter(lambda r: r.status != "failed"), min_size=1, max_size=8))
def test_without_failures_the_status_only_moves_forward(arrivals: list[StatusReport]) -> None:
    ranks = [domain.STATUS_RANK[s.status] for s in fold(ACCEPTED, arrivals)]
    assert ranks == sorted(ranks)
    known = [r for r in arrivals if r.status in domain.STATUS_RANK]
    if known:
        assert ranks[-1] == max(domain.STATUS_RANK[r.status] for r in known)


@given(st.lists(reports, max_size=8))
def test_failed_holds_unless_a_later_delivery_or_read(arrivals: list[StatusReport]) -> None:
    state = domain.delivery_state(ACCEPTED, arrivals)
    failures = [r.at for r in arrivals if r.status == "failed"]
    if not failures:
        assert state.status != "failed"
        return
    later_positive = any(r.status in {"delivered", "read", "played"} and r.at > max(failures) for r in arrivals)
    assert (state.status == "failed") is not later_positive


def test_the_documented_cases() -> None:
    sent, delivered, read = (
        StatusReport(s, T0 + timedelta(seconds=i)) for i, s in enumerate(["sent", "delivered", "read"])
    )
    assert domain.delivery_state(ACCEPTED, [read, sent]) == DeliveryState("read", read.at)
    assert domain.delivery_state(ACCEPTED, [read, delivered]).status == "read"
    failed = StatusReport("failed", T0 + timedelta(seconds=10))
    assert domain.delivery_state(ACCEPTED, [sent, failed]).status == "failed"  # failed wins over sent
    late = StatusReport("delivered", T0 + timedelta(seconds=11))
    assert domain.delivery_state(ACCEPTED, [failed, late]).status == "delivered"
    assert domain.delivery_state(ACCEPTED, [StatusReport("deleted", T0)]) == ACCEPTED  # unknown: no change
    assert domain.delivery_state(DeliveryState("pending", T0), []).status == "pending"


messages_at = st.lists(st.integers(min_value=0, max_value=200_000).map(lambda s: T0 + timedelta(seconds=s)), min_size=1)


@given(messages_at, st.randoms())
def test_window_expiry_is_the_latest_message_plus_24h_in_any_order(times: list[datetime], rnd: object) -> None:
    shuffled = list(times)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    expires: datetime | None = None
    for at in shuffled:
        refreshed = domain.refreshed_expiry(expires, at)
        assert expires is None or refreshed >= expires  # never shortened
        expires = refreshed
    assert expires == max(times) + timedelta(hours=24)


@given(messages_at, st.integers(min_value=-100_000, max_value=300_000), st.integers(min_value=1, max_value=1380))
def test_window_phases(times: list[datetime], offset: int, lead_minutes: int) -> None:
    expires = max(times) + timedelta(hours=24)
    now = max(times) + timedelta(seconds=offset)
    lead = timedelta(minutes=lead_minutes)
    phase = domain.window_phase(expires, now, lead)
    assert domain.window_open(expires, now) is (now < expires)
    if now >= expires:
        assert phase == "closed"
    elif now >= expires - lead:
        assert phase == "closing"
    else:
        assert phase == "open"


def test_no_window_without_a_customer_message() -> None:
    assert domain.window_open(None, T0) is False
    assert domain.window_phase(None, T0, timedelta(hours=1)) == "closed"


@pytest.mark.parametrize(
    ("raw", "wa_id"),
    [
        ("+1 (415) 555-2671", "14155552671"),
        ("0039 333 123 4567", "393331234567"),
        ("+52 55 1234 5678", "5215512345678"),  # Meta's form of a Mexican mobile keeps the 1 after 52
        ("+52 1 55 1234 5678", "5215512345678"),
    ],
)
def test_phone_numbers_are_normalised(raw: str, wa_id: str) -> None:
    assert domain.normalise_phone(raw).wa_id == wa_id


@pytest.mark.parametrize(
    "raw", ["5557654321", "+1555", "+1555765432100000", "+0155576543", "+1555abc4321", "", "+1 555 765 4321"]
)
def test_bad_phone_numbers_are_refused(raw: str) -> None:
    with pytest.raises(domain.InvalidPhoneNumber):
        domain.normalise_phone(raw)


@given(st.datetimes(timezones=st.just(UTC)), st.text(min_size=1, max_size=40))
def test_cursors_round_trip(at: datetime, item_id: str) -> None:
    assert domain.decode_cursor(domain.encode_cursor(at, item_id)) == (at, item_id)


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", "WzEsMl0", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgIngiXQ"])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(domain.InvalidCursor):
        domain.decode_cursor(cursor)


def test_ids_are_stable_and_tenant_scoped() -> None:
    assert domain.chat_id_for("a", "p", "1") == domain.chat_id_for("a", "p", "1")
    assert domain.chat_id_for("a", "p", "1") != domain.chat_id_for("b", "p", "1")
    assert domain.inbound_message_id("a", "w") != domain.inbound_message_id("b", "w")
    assert domain.request_id_for("a", "c", "k") == domain.request_id_for("a", "c", "k")
    assert domain.request_id_for("a", "c", "k") != domain.request_id_for("a", "c2", "k")


def test_previews() -> None:
    assert domain.preview({"type": "text", "body": "x" * 500}).endswith("…")
    assert domain.preview({"type": "audio", "id": "1", "voice": True}) == "[Voice message]"
    assert domain.preview({"type": "image", "id": "1", "caption": "box"}) == "box"
    assert domain.preview({"type": "template", "name": "open_template"}) == "[Template open_template]"
    assert domain.preview({"type": "unsupported", "original_type": "poll", "raw": {}}) == "[poll]"
    assert not domain.counts_as_unread("reaction")
    assert domain.counts_as_unread("image")
