"""Outbound's pure rules: window, Meta's codes, pacing, backoff and templates (no I/O)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waflow_outbound.domain import (
    CALL_KINDS,
    Call,
    Cleared,
    MetaFailure,
    Pace,
    RateLimited,
    after_rate_limit,
    backoff_seconds,
    clear,
    gcra,
    number_pace,
    permit,
    permits,
    window_open,
)
from waflow_outbound.domain_templates import (
    OPEN_TEMPLATE,
    TemplateParamsError,
    bind,
    meta_components,
    shape_of,
)

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def test_the_window_lasts_24_hours_from_the_customers_message() -> None:
    assert window_open(T0, T0 + timedelta(hours=23, minutes=59))
    assert not window_open(T0, T0 + timedelta(hours=24))
    assert not window_open(None, T0)


@pytest.mark.parametrize("kind", CALL_KINDS)
def test_the_gate_stops_every_kind_of_call_to_a_blacklisted_customer(kind: Any) -> None:
    call = Call(kind, "t", "pn", "w", {})
    for window in (True, False):
        assert clear(call, blacklisted=True, window_open=window) == "blacklisted"
    cleared = clear(call, blacklisted=False, window_open=True)
    assert isinstance(cleared, Cleared)
    assert cleared.call is call


def test_outside_the_window_only_a_template_passes_the_gate() -> None:
    passed = {
        k
        for k in CALL_KINDS
        if isinstance(clear(Call(k, "t", "pn", "w", {}), blacklisted=False, window_open=False), Cleared)
    }
    assert passed == {"template"}
    assert clear(Call("read", "t", "pn", "w", {}), blacklisted=False, window_open=False) == "window_closed"


def test_a_call_cannot_be_cleared_around_the_gate() -> None:
    with pytest.raises(TypeError):
        Cleared(Call("read", "t", "pn", "w", {}), gate=object())


@pytest.mark.parametrize(
    ("code", "http_status", "handling", "reason"),
    [
        (131047, 400, "reject", "window_closed"),
        (132000, 400, "reject", "template_params"),
        (132001, 404, "reject", "template_unknown"),
        (131026, 400, "reject", "undeliverable"),
        (190, 401, "reject", "auth"),
        (368, 403, "reject", "meta_error"),
        (130429, 400, "slow_number", "meta_error"),
        (131056, 400, "slow_recipient", "meta_error"),
        (131000, 500, "retry", "meta_error"),
        (131016, 503, "retry", "meta_error"),
        (2, 500, "retry", "meta_error"),
        (None, 502, "retry", "gave_up"),
        (None, None, "retry", "gave_up"),
        (12345, 503, "retry", "meta_error"),
        (12345, 400, "reject", "meta_error"),
    ],
)
def test_metas_answers_map_to_handling_and_reason(
    code: int | None, http_status: int | None, handling: str, reason: str
) -> None:
    failure = MetaFailure(http_status=http_status, code=code)
    assert failure.handling == handling
    assert failure.reason == reason


def starts_in_any(starts: list[float], seconds: float) -> int:
    """The most starts in any window of `seconds` (starts sorted)."""
    best = 0
    for i, first in enumerate(starts):
        best = max(best, sum(1 for s in starts[i:] if s < first + seconds))
    return best


def take(
    starts: tuple[float, ...], now: float, pace: Pace, lead: float, **pause: float
) -> tuple[float, float, tuple[float, ...]]:
    """A caller that asks the bucket at `now`, and again whenever it says, until it gets a start."""
    while True:
        got = permit(starts, now, pace, lead=lead, **pause)
        assert got.next_at >= now or got.start is not None
        if got.start is not None:
            assert now <= got.start <= now + lead
            return got.start, got.next_at, got.starts
        now = got.next_at - lead if got.next_at - lead > now else got.next_at  # (rounding)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=100),
    margin=st.floats(min_value=0.0, max_value=0.2),
    lead=st.floats(min_value=0.0, max_value=0.05),
    arrivals=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.2), st.floats(min_value=0, max_value=0.5)),
        min_size=1,
        max_size=300,
    ),
)
def test_no_window_ever_holds_more_starts_than_the_limit(
    rate: int, margin: float, lead: float, arrivals: list[tuple[float, float]]
) -> None:
    """Callers of any number of instances ask at any times, and come back late by any amount after a refusal.
    No `window` ever holds more than `limit` starts, two starts are `gap` apart, and with up to `margin` of
    jitter between a start and WhatsApp's count no second at WhatsApp holds more than the rate."""
    pace = number_pace(rate, margin)
    starts: tuple[float, ...] = ()
    every: list[float] = []
    now = 0.0
    for gap, lateness in arrivals:
        now += gap
        start, _, starts = take(starts, now + lateness, pace, lead)
        every.append(start)
    every.sort()
    assert all(b - a >= pace.gap - 1e-9 for a, b in itertools.pairwise(every))
    assert starts_in_any(every, pace.window - 1e-9) <= pace.limit
    counted = sorted(s + (margin if i % 2 else 0.0) for i, s in enumerate(every))
    assert starts_in_any(counted, 1.0 - 1e-9) <= rate


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=100),
    margin=st.floats(min_value=0.0, max_value=0.2),
    lead=st.floats(min_value=0.0, max_value=0.2),
    tries=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.2), st.integers(min_value=1, max_value=12)),
        min_size=1,
        max_size=200,
    ),
)
def test_starts_taken_several_at_a_time_keep_the_same_limits(
    rate: int, margin: float, lead: float, tries: list[tuple[float, int]]
) -> None:
    """An instance asks for as many starts as it has callers waiting: however many at once and whenever, no
    window holds more than `limit` starts, two are `gap` apart, each is within `lead` of its try, and a try is
    refused only when the first of its starts would be further away than that."""
    pace = number_pace(rate, margin)
    starts: tuple[float, ...] = ()
    every: list[float] = []
    now = 0.0
    for gap, count in tries:
        now += gap
        got = permits(starts, now, pace, count=count, lead=lead)
        single = permit(starts, now, pace, lead=lead)
        assert (got.granted[:1] or (None,))[0] == single.start
        assert len(got.granted) <= count
        assert all(now <= start <= now + lead for start in got.granted)
        assert got.next_at >= now
        starts = got.starts
        every.extend(got.granted)
    assert every == sorted(every)
    assert all(b - a >= pace.gap - 1e-9 for a, b in itertools.pairwise(every))
    assert starts_in_any(every, pace.window - 1e-9) <= pace.limit


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=100),
    starts=st.lists(st.floats(min_value=0, max_value=2.0), max_size=120).map(lambda s: tuple(sorted(s))),
    now=st.floats(min_value=0, max_value=4.0),
)
def test_a_caller_is_refused_only_when_the_window_or_the_gap_is_full(
    rate: int, starts: tuple[float, ...], now: float
) -> None:
    """Only starts handed out count: whoever came late before, a caller goes as soon as the window has room."""
    pace = number_pace(rate, 0.04)
    starts = starts[-pace.limit :]
    got = permit(starts, now, pace)
    in_window = sum(1 for s in starts if s > now - pace.window)
    room = in_window < pace.limit and (not starts or now >= starts[-1] + pace.gap)
    assert (got.start == now) == room


def test_a_busy_number_runs_close_to_its_rate_without_bursts() -> None:
    pace = number_pace(80, 0.04)
    starts: tuple[float, ...] = ()
    every, now = [], 0.0
    for _ in range(800):
        start, next_at, starts = take(starts, now, pace, 0.02)
        every.append(start)
        now = next_at - 0.02
    assert min(b - a for a, b in itertools.pairwise(every)) >= pace.gap - 1e-9
    assert starts_in_any(every, 1.0) <= 80
    # A busy number starts exactly `limit` per window, so it runs at 80 / 1.04 = 76.9/s.
    assert all(b - a == pytest.approx(pace.window) for a, b in zip(every, every[80:], strict=False))
    assert 76 < pace.per_second < 77


def test_a_late_caller_wastes_no_start() -> None:
    """Callers that come back a little late (a round trip) still send `limit` per window: the gap leaves room to
    catch up, and a late start takes nobody else's."""
    pace = number_pace(80, 0.04)
    starts: tuple[float, ...] = ()
    every, now, rng = [], 0.0, random.Random(7)
    for _ in range(2000):
        start, next_at, starts = take(starts, now, pace, 0.0)
        every.append(start)
        now = next_at + rng.uniform(0, 0.002)  # late by up to 2 ms every time
    assert 2000 / (every[-1] - every[0]) > 76


def test_a_130429_pauses_the_number_then_halves_its_pace() -> None:
    pace = number_pace(10, 0.0)
    got = permit((), 1.0, pace, paused_until=3.0, slow_until=8.0)
    assert got.start is None
    assert got.next_at == 3.0
    starts: tuple[float, ...] = ()
    every, now = [], 3.0
    while now < 8.0:
        start, now, starts = take(starts, now, pace, 0.0, paused_until=3.0, slow_until=8.0)
        every.append(start)
    slowed = [s for s in every if s < 8.0]
    assert min(slowed) == 3.0
    assert starts_in_any(slowed, 2.0) <= 10
    assert len(slowed) <= 5 * 5 + 10  # half of 10/s over the 5 slowed seconds, and the first window's burst


def test_a_single_130429_only_pauses_and_a_repeat_after_the_pause_halves_the_pace() -> None:
    fresh = RateLimited(0.0, 0.0, 0.0)
    first = after_rate_limit(100.0, 0.5, 5.0, fresh)
    assert first == RateLimited(100.5, 0.0, 100.0)
    in_flight = after_rate_limit(100.2, 0.7, 5.0, first)  # a call already on its way: the same hiccup
    assert in_flight == RateLimited(100.9, 0.0, 100.2)
    repeat = after_rate_limit(103.0, 0.5, 5.0, in_flight)
    assert repeat == RateLimited(103.5, 108.5, 103.0)
    much_later = after_rate_limit(200.0, 0.5, 5.0, repeat)
    assert much_later == RateLimited(200.5, 108.5, 200.0)
    assert after_rate_limit(101.0, 0.5, 0.0, first).slow_until == 0.0  # slowing switched off


@settings(max_examples=200, deadline=None)
@given(
    strikes=st.lists(st.tuples(st.floats(min_value=0, max_value=10), st.floats(min_value=0, max_value=3))),
    slow=st.floats(min_value=0, max_value=10),
)
def test_a_130429_never_shortens_a_pause_or_a_slowdown(strikes: list[tuple[float, float]], slow: float) -> None:
    state, now = RateLimited(0.0, 0.0, 0.0), 0.0
    for gap, pause in strikes:
        now += gap
        after = after_rate_limit(now, pause, slow, state)
        assert after.paused_until >= max(state.paused_until, now + pause)
        assert after.slow_until >= state.slow_until
        assert after.slow_until in (state.slow_until, max(state.slow_until, now + pause + slow))
        state = after


def test_one_customer_gets_a_burst_then_metas_pair_rate() -> None:
    tat, slots = 0.0, []
    for _ in range(5):
        slot, tat = gcra(tat, 0.0, 6.0, tolerance=2 * 6.0)
        slots.append(slot)
    assert slots == [0.0, 0.0, 0.0, 6.0, 12.0]
    slot, _ = gcra(tat, 10.0, 6.0, tolerance=12.0, blocked_until=14.0)  # 131056 blocked the customer
    assert slot == 18.0


@given(attempt=st.integers(min_value=0, max_value=40), seed=st.integers())
def test_backoff_grows_is_jittered_and_bounded(attempt: int, seed: int) -> None:
    delay = backoff_seconds(attempt, base=0.5, cap=30.0, rng=random.Random(seed))
    step = min(30.0, 0.5 * 2**attempt)
    assert step / 2 <= delay <= step


# --- templates ---------------------------------------------------------------------------------------------------

SPRING_SALE = {
    "name": "spring_sale",
    "language": "en",
    "parameter_format": "POSITIONAL",
    "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Spring sale for {{1}}"},
        {"type": "BODY", "text": "Hi {{1}}, take {{2}} off everything until {{3}}."},
        {"type": "FOOTER", "text": "Reply STOP to opt out"},
        {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Shop now"}]},
    ],
}
ORDER_SHIPPED = {
    "name": "order_shipped_v2",
    "language": "en_US",
    "components": [
        {"type": "HEADER", "format": "IMAGE"},
        {"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped."},
        {
            "type": "BUTTONS",
            "buttons": [
                {"type": "QUICK_REPLY", "text": "Track my parcel"},
                {"type": "URL", "text": "Track online", "url": "https://shop.example.com/track/{{1}}"},
            ],
        },
    ],
}
APPOINTMENT = {
    "name": "appointment_reminder",
    "language": "es_MX",
    "parameter_format": "NAMED",
    "components": [{"type": "BODY", "text": "Hola {{customer_name}}, a las {{appointment_time}}."}],
}


def test_open_template_reads_the_way_agents_write_it() -> None:
    shape = shape_of(OPEN_TEMPLATE)
    assert shape.agent_text() == "Goodbye %%SENTENCE%%. See you soon!"
    values = bind(shape, {"%%SENTENCE%%": "Maria"})
    assert shape.render(values)["body"] == "Goodbye Maria. See you soon!"
    assert bind(shape, {"1": "Maria"}) == values  # Meta's own key works too
    assert bind(shape, ["Maria"]) == values
    assert meta_components(shape, values) == [{"type": "body", "parameters": [{"type": "text", "text": "Maria"}]}]


@pytest.mark.parametrize(
    "parameters",
    [{}, {"SENTENCE": "a", "OTHER": "b"}, {"OTHER": "b"}, ["a", "b"], [], {"SENTENCE": ""}, {"SENTENCE": "x" * 1025}],
)
def test_parameters_that_do_not_fit_are_refused(parameters: dict[str, str] | list[str]) -> None:
    with pytest.raises(TemplateParamsError):
        bind(shape_of(OPEN_TEMPLATE), parameters)


def test_header_and_body_positions_are_told_apart() -> None:
    shape = shape_of(SPRING_SALE)
    assert [p.name for p in shape.placeholders] == ["HEADER_1", "1", "2", "3"]
    values = bind(shape, {"HEADER_1": "Ana", "1": "Ana", "2": "20%", "3": "May"})
    assert [c["type"] for c in meta_components(shape, values)] == ["header", "body"]
    rendered = shape.render(values)
    assert rendered["header"] == "Spring sale for Ana"
    assert rendered["body"] == "Hi Ana, take 20% off everything until May."
    assert rendered["footer"] == "Reply STOP to opt out"


def test_media_headers_and_url_buttons_take_their_own_parameters() -> None:
    shape = shape_of(ORDER_SHIPPED)
    assert [p.name for p in shape.placeholders] == ["HEADER", "1", "2", "BUTTON_1"]
    values = bind(shape, ["https://cdn.example.com/p.jpg", "Maria", "#4471", "4471"])
    assert meta_components(shape, values) == [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/p.jpg"}}]},
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Maria"}, {"type": "text", "text": "#4471"}],
        },
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "4471"}]},
    ]


def test_named_parameters_carry_their_names() -> None:
    shape = shape_of(APPOINTMENT)
    assert shape.agent_text() == "Hola %%CUSTOMER_NAME%%, a las %%APPOINTMENT_TIME%%."
    values = bind(shape, {"customer_name": "Maria", "APPOINTMENT_TIME": "10:30"})
    assert meta_components(shape, values)[0]["parameters"][0] == {
        "type": "text",
        "text": "Maria",
        "parameter_name": "customer_name",
    }
