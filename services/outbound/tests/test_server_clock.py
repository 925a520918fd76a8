"""The database server's clock as outbound's pacing sees it: slow answers must not move it."""

from __future__ import annotations

import pytest
from waflow_outbound.repository.pacing import ServerClock


def test_slow_answers_do_not_move_the_offset_and_a_faster_one_corrects_it() -> None:
    clock = ServerClock(horizon=300.0, slot=10.0)
    server_ms = 1_000_000.0
    clock.note(server_ms, server_ms / 1000 + 0.002)  # 2 ms from the server's `now` to our receipt
    for i in range(1, 500):  # a busy minute: every answer 5-30 ms late
        at = server_ms / 1000 + i * 0.1
        clock.note(at * 1000, at + 0.005 + (i % 6) * 0.005)
    assert clock.offset == pytest.approx(0.002)
    assert clock.local(server_ms + 5_000) == pytest.approx(server_ms / 1000 + 5 + 0.002)
    clock.note(server_ms + 60_000, server_ms / 1000 + 60 + 0.0005)
    assert clock.offset == pytest.approx(0.0005)


def test_samples_older_than_the_horizon_are_forgotten() -> None:
    """A server clock that stepped back against ours is followed once the samples before the step age out."""
    clock = ServerClock(horizon=30.0, slot=10.0)
    clock.note(0.0, 0.001)
    for second in range(1, 45):
        clock.note(second * 1000 - 50, second + 0.001)  # the server is 50 ms behind now
    assert clock.offset == pytest.approx(0.051)
