"""Outbound's pure rules: the gate every call passes, the window, Meta's error codes, pacing per number and per
recipient, retry backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from waflow_common.events.outbound import RejectReason

WINDOW = timedelta(hours=24)


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """The customer-service window: 24 hours from Meta's timestamp of the customer's last message."""
    return last_inbound_at is not None and now < last_inbound_at + WINDOW


# --- the gate ----------------------------------------------------------------------------------------------------

# Every kind of call outbound makes to a customer through WhatsApp. A typing indicator rides on a read receipt
# (Meta's `typing_indicator` of mark-as-read); a reaction would be a kind of its own.
CallKind = Literal["text", "template", "read"]
CALL_KINDS: tuple[CallKind, ...] = get_args(CallKind)
# The kinds that may reach a customer whose 24-hour window is closed: Meta takes only templates then. Meta
# would also take a read receipt for 30 days, but our rule is stricter: after the window, nothing but an
# approved template an agent chose. Every other kind, a future one included, needs the window open.
OUTSIDE_WINDOW: frozenset[CallKind] = frozenset({"template"})


@dataclass(frozen=True)
class Call:
    """One call to WhatsApp's `/messages` that reaches one customer."""

    kind: CallKind
    tenant_id: str
    phone_number_id: str
    wa_id: str
    body: dict[str, Any]
    user_id: str | None = None  # the customer's BSUID, when Meta gave one


def refusal(kind: CallKind, *, blacklisted: bool, window_open: bool) -> RejectReason | None:
    """Our rules for any call to a customer, whatever its kind: None when it may go."""
    if blacklisted:
        return "blacklisted"
    if kind not in OUTSIDE_WINDOW and not window_open:
        return "window_closed"
    return None


_GATE = object()


class Cleared:
    """A call the gate let through. The WhatsApp client posts nothing else, so no kind of call can skip it."""

    __slots__ = ("call",)

    def __init__(self, call: Call, *, gate: object) -> None:
        if gate is not _GATE:
            raise TypeError("only `clear` lets a call through")
        self.call = call


def clear(call: Call, *, blacklisted: bool, window_open: bool) -> Cleared | RejectReason:
    """The gate: the call, cleared, or the reason it must not reach the customer."""
    reason = refusal(call.kind, blacklisted=blacklisted, window_open=window_open)
    return reason if reason is not None else Cleared(call, gate=_GATE)


# --- Meta's answers ----------------------------------------------------------------------------------------------

Handling = Literal["accept", "reject", "retry", "slow_number", "slow_recipient"]

# Codes Meta documents as temporary (REFERENCE §8); everything else is permanent unless HTTP says 5xx.
_TEMPORARY = frozenset({131000, 131016, 131057, 2})
_AUTH = frozenset({0, 10, 190, *range(200, 300)})
_REASONS: dict[int, RejectReason] = {
    131047: "window_closed",
    132000: "template_params",
    132012: "template_params",
    132001: "template_unknown",
    132015: "template_unknown",
    132016: "template_unknown",
    131026: "undeliverable",
}


@dataclass(frozen=True)
class MetaFailure:
    """A call that did not send: Meta's error (code/title/details) or a transport failure (code None)."""

    http_status: int | None
    code: int | None
    title: str | None = None
    details: str | None = None

    @property
    def handling(self) -> Handling:
        if self.code == 130429:
            return "slow_number"
        if self.code == 131056:
            return "slow_recipient"
        if self.code is None or self.code in _TEMPORARY or (self.http_status or 0) >= 500:
            return "retry"
        return "reject"

    @property
    def reason(self) -> RejectReason:
        if self.code is None:
            return "gave_up"
        if self.code in _AUTH:
            return "auth"
        return _REASONS.get(self.code, "meta_error")


def backoff_seconds(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": never less than half the step, so retries stay spread out."""
    step: float = min(cap, base * 2.0 ** max(0, attempt))
    return step / 2 + rng.uniform(0, step / 2)


def recipient_backoff_seconds(strikes: int) -> float:
    """Meta's advice for 131056 (pair rate): wait 4^n seconds, n = 0, 1, 2, ..."""
    seconds: float = 4.0 ** min(strikes, 5)
    return seconds


# --- pacing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pace:
    """How a number's calls are spaced: at most `limit` starts in any `window` seconds, and at least `gap`
    seconds between two starts (so a backlog goes out evenly, not in bursts of `limit`)."""

    limit: int
    window: float
    gap: float

    @property
    def per_second(self) -> float:
        """The rate a busy number runs at."""
        return self.limit / self.window


def number_pace(rate: int, margin: float) -> Pace:
    """`rate` starts in any 1 + margin seconds: the margin absorbs a call starting late after its start and the
    jitter between our start and WhatsApp's count (up to `margin` seconds of both, no second at WhatsApp holds
    more than `rate` calls), so a busy number runs at rate / (1 + margin). The gap is 0.8 of the even spacing:
    calls go out evenly, yet those after a late one can catch up."""
    limit = max(1, rate)
    window = 1.0 + margin
    return Pace(limit, window, 0.8 * window / limit)


@dataclass(frozen=True)
class Permit:
    """A caller's try at a number's bucket: its start (None: refused), when the next start may be, and the
    bucket's starts after the try."""

    start: float | None
    next_at: float
    starts: tuple[float, ...]


def _free_at(starts: tuple[float, ...], pace: Pace, *, slow: bool, paused_until: float) -> float:
    window, gap = (2 * pace.window, 2 * pace.gap) if slow else (pace.window, pace.gap)
    free = paused_until
    if len(starts) >= pace.limit:
        free = max(free, starts[-pace.limit] + window)
    if starts:
        free = max(free, starts[-1] + gap)
    return free


def permit(
    starts: tuple[float, ...],
    now: float,
    pace: Pace,
    *,
    lead: float = 0.0,
    paused_until: float = 0.0,
    slow_until: float = 0.0,
) -> Permit:
    """The sliding-window rule the number's bucket runs in the database: the bucket keeps the last `limit`
    starts; a caller gets the earliest start the window and the gap allow, if it is at most `lead` from now
    (it waits for it, with its attempt recorded and the gate passed), else none and the time to try again.
    Slowed (a 130429): half the pace; paused: nothing before `paused_until`.

    Only starts handed out count, so a caller that comes late wastes nothing: the next one may start at once."""
    slow = now < slow_until
    free = max(now, _free_at(starts, pace, slow=slow, paused_until=paused_until))
    if free > now + lead:
        return Permit(None, free, starts)
    after = (*starts, free)[-pace.limit :]
    return Permit(free, _free_at(after, pace, slow=slow, paused_until=paused_until), after)


@dataclass(frozen=True)
class Permits:
    """Several callers' try at once: the starts handed out (earliest first), when the next may be, and the
    bucket's starts after the try."""

    granted: tuple[float, ...]
    next_at: float
    starts: tuple[float, ...]


def permits(
    starts: tuple[float, ...],
    now: float,
    pace: Pace,
    *,
    count: int,
    lead: float = 0.0,
    paused_until: float = 0.0,
    slow_until: float = 0.0,
) -> Permits:
    """Up to `count` starts in one try: `permit` asked `count` times at the same `now`, each after the last
    one's start, so an instance with several callers waiting asks the bucket once for all of them (the database
    runs the same loop in one update)."""
    granted: list[float] = []
    got = permit(starts, now, pace, lead=lead, paused_until=paused_until, slow_until=slow_until)
    while got.start is not None:
        granted.append(got.start)
        starts = got.starts
        if len(granted) == count:
            break
        got = permit(starts, now, pace, lead=lead, paused_until=paused_until, slow_until=slow_until)
    return Permits(tuple(granted), got.next_at, starts)


@dataclass(frozen=True)
class RateLimited:
    """A number's state after WhatsApp's 130429s: no start before `paused_until`, half pace until `slow_until`,
    and when the last 130429 came."""

    paused_until: float
    slow_until: float
    struck_at: float


def after_rate_limit(now: float, pause: float, slow: float, before: RateLimited) -> RateLimited:
    """What a 130429 does to the number, for every instance: it pauses for `pause` (the retry's backoff). One that
    comes after that pause is over and within `slow` seconds of the previous one says the pace itself is too fast
    for WhatsApp now, so the number also runs at half pace for `slow` seconds; a single one (a few calls bunched
    by a hiccup between our start and WhatsApp's count) costs only the pause. Answers to calls already on their
    way during the pause are the same hiccup, not a repeat."""
    repeated = now >= before.paused_until and now < before.struck_at + slow
    paused_until = max(before.paused_until, now + pause)
    slow_until = max(before.slow_until, now + pause + slow) if repeated else before.slow_until
    return RateLimited(paused_until, slow_until, now)


def gcra(
    tat: float, now: float, interval: float, tolerance: float = 0.0, blocked_until: float = 0.0
) -> tuple[float, float]:
    """The generic cell rate algorithm, as the database's buckets run it: (slot, next tat) for a caller at
    `now`. `tolerance` lets (tolerance / interval + 1) calls start at once (a burst); zero paces evenly."""
    slot = max(now, tat - tolerance, blocked_until)
    return slot, max(tat, slot) + interval
