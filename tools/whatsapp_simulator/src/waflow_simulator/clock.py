"""Injectable wall clocks: the real one and a manual one for deterministic tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """Only moves when told to, so windows, rate limits and timestamps can be tested exactly."""

    def __init__(self, start: float = 1_767_258_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
