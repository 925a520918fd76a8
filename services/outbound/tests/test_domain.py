"""Outbound's pure rules: window, Meta's codes, pacing, backoff and templates (no I/O)."""

from __future__ import annotations

import heapq
import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waflow_outbound.domain import (
    CALL_KINDS,
    Call,
    Cleared,
    MetaFailure,
    NumberPace,
    RecipientPace,
    backoff_seconds,
    clear,
    window_open,
)
from waflow_outbound.domain_templates import (
    OPEN_TEMPLATE,
    TemplateParamsError,
    bind,
    meta_components,
    shape_of,
)
from waflow_outbound.repository import OutboundRepository

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


def starts_in_any_second(starts: list[float]) -> int:
    best = 0
    for i, first in enumerate(starts):
        best = max(best, sum(1 for s in starts[i:] if s < first + 1.0))
    return best


def simulate(pace: NumberPace, wakes: list[float]) -> list[float]:
    """Callers wake at `wakes` (late or early, in any order) and start as the pace allows, in time order."""
    heap = [(t, i) for i, t in enumerate(wakes)]
    heapq.heapify(heap)
    starts = []
    while heap:
        now, caller = heapq.heappop(heap)
        allowed = pace.start_at(now)
        if allowed > now:
            heapq.heappush(heap, (allowed, caller))
            continue
        pace.started(now)
        starts.append(now)
    return starts


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
    lateness=st.lists(st.floats(min_value=0, max_value=2.0), min_size=200, max_size=200),
)
def test_no_one_second_window_ever_holds_more_calls_than_the_rate(
    rate: int, gaps: list[float], lateness: list[float]
) -> None:
    """Whatever the arrivals, and however late each caller wakes after its slot, starts stay under the rate."""
    pace = NumberPace(rate, margin=0.1)
    now = 0.0
    wakes = []
    for i, gap in enumerate(gaps):
        now += gap
        slot = pace.reserve(now)
        assert slot >= now
        wakes.append(slot + lateness[i])
    starts = simulate(pace, wakes)
    assert len(starts) == len(gaps)
    assert starts_in_any_second(sorted(starts)) <= rate


def test_a_busy_number_runs_close_to_its_rate_without_bursts() -> None:
    pace = NumberPace(80, margin=0.1)
    slots = [pace.reserve(0.0) for _ in range(800)]
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 1 / 80 - 1e-9
    starts = simulate(pace, slots)
    assert 9.9 < max(starts) < 11.1  # 800 calls take ~10 s at 80/s (a little more: the margin)


def test_130429_pauses_the_number_and_halves_its_pace_then_it_recovers() -> None:
    pace = NumberPace(100)
    pace.started(pace.reserve(0.0))
    pace.slow_down(0.0, pause=2.0)
    assert pace.reserve(0.0) >= 2.0
    assert pace.start_at(0.5) >= 2.0
    assert pace.effective_rate() == 50
    for _ in range(100):
        pace.succeeded()
    assert pace.effective_rate() == 100


def test_one_customer_gets_a_burst_then_metas_pair_rate() -> None:
    pace = RecipientPace(burst=3, interval=6.0)
    for _ in range(3):
        assert pace.ready_at(0.0) == 0.0
        pace.take(0.0)
    assert pace.ready_at(0.0) == pytest.approx(6.0)
    pace.refused(10.0)  # 131056
    assert pace.ready_at(10.0) >= 11.0


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


@given(offsets=st.lists(st.integers(min_value=-100_000, max_value=100_000), min_size=1, max_size=30))
def test_the_window_projection_only_moves_forward_and_blacklist_keeps_the_highest_version(offsets: list[int]) -> None:
    projection = OutboundRepository(cast(Any, None), cast(Any, None))
    for offset in offsets:
        projection._note_inbound("t", "pn", ("15550001",), T0 + timedelta(seconds=offset))
    assert projection.last_inbound_at("t", "pn", "15550001") == T0 + timedelta(seconds=max(offsets))
    assert projection.last_inbound_at("other-tenant", "pn", "15550001") is None
    for version, blacklisted in [(2, True), (1, False), (3, True), (2, False)]:
        projection._note_contact("t", "c1", ("15550001",), version, blacklisted)
    assert projection.blacklisted("t", "15550001")
    assert not projection.blacklisted("other-tenant", "15550001")
