"""Outbound's pure rules: the gate every call passes, the window, Meta's error codes, pacing per number and per
recipient, retry backoff."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
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


@dataclass
class NumberPace:
    """When calls of one phone number may start: never more than `rate` in any (1 + margin) seconds.

    Two parts. `reserve` hands out smooth target times, 1/rate apart, so a busy number sends evenly instead
    of in bursts. `start_at`/`started` are the hard cap, over the times calls really start: a caller woken
    late (a busy event loop, a slow write) may still start if the last second allows it, and otherwise
    waits, so a late wake-up costs neither the cap nor a slot. The margin absorbs the jitter between our
    start and WhatsApp's count. A 130429 pauses the number and halves its pace; each success gives back.
    """

    rate: int
    margin: float = 0.1
    factor: float = 1.0
    paused_until: float = 0.0
    _starts: deque[float] = field(default_factory=deque)
    _next: float = 0.0

    def effective_rate(self) -> int:
        return max(1, int(self.rate * self.factor))

    def reserve(self, now: float) -> float:
        start = max(now, self._next, self.paused_until)
        self._next = start + 1.0 / self.effective_rate()
        return start

    def start_at(self, now: float) -> float:
        """The earliest time from `now` on at which one more call may start."""
        rate = self.effective_rate()
        start = max(now, self.paused_until)
        if len(self._starts) >= rate:
            start = max(start, self._starts[-rate] + 1.0 + self.margin)
        return start

    def started(self, now: float) -> None:
        self._starts.append(now)
        while len(self._starts) > self.rate:
            self._starts.popleft()

    def slow_down(self, now: float, pause: float) -> None:
        self.paused_until = max(self.paused_until, now + pause)
        self.factor = max(0.05, self.factor / 2)
        self._next = max(self._next, self.paused_until)

    def succeeded(self) -> None:
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + 1.0 / self.rate)


@dataclass
class RecipientPace:
    """Meta's pair rate: about one message per `interval` to one customer, with a borrowed burst allowance."""

    burst: int
    interval: float
    tokens: float = -1.0
    updated_at: float = 0.0
    blocked_until: float = 0.0
    strikes: int = 0

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.updated_at = float(self.burst), now
            return
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated_at) / self.interval)
        self.updated_at = max(self.updated_at, now)

    def ready_at(self, now: float) -> float:
        self._refill(now)
        wait = 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval
        return max(now + wait, self.blocked_until)

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1

    def refused(self, now: float) -> None:
        self.blocked_until = now + recipient_backoff_seconds(self.strikes)
        self.strikes += 1

    def idle(self, now: float) -> bool:
        """Nothing left to remember: full allowance and no penalty (the lane may forget this customer)."""
        self._refill(now)
        return self.tokens >= self.burst and now >= self.blocked_until
