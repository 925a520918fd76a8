"""A number's bucket in the database: the sliding window of starts, two callers at once, a start given back."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from waflow_outbound.domain import RateLimited, after_rate_limit, number_pace, permits
from waflow_outbound.repository.pacing import Buckets

pytestmark = pytest.mark.integration


async def test_callers_of_two_instances_never_start_more_than_the_limit_per_window(
    outbound_db: AsyncDatabase[dict[str, Any]],
) -> None:
    number = f"pn-{uuid.uuid4().hex[:8]}"
    pace = number_pace(5, 0.0)
    instances = [Buckets(outbound_db), Buckets(outbound_db)]
    starts: list[float] = []

    async def caller(buckets: Buckets, count: int) -> None:
        while True:
            grant = await buckets.number_permits(number, pace, 0.05, count)
            if grant.starts:
                starts.extend(stored / 1000 for _, stored in grant.starts)  # the server's clock: one for both
                return
            await asyncio.sleep(max(0.0, grant.next_at - 0.05 - time.time()))

    await asyncio.gather(*(caller(instances[i % 2], 1 + i % 3) for i in range(12)))
    starts.sort()
    assert len(starts) >= 12
    assert all(b - a >= pace.gap - 1e-6 for a, b in itertools.pairwise(starts))
    assert all(b - a >= pace.window - 1e-6 for a, b in zip(starts, starts[5:], strict=False))


async def test_a_start_given_back_goes_to_the_next_caller(outbound_db: AsyncDatabase[dict[str, Any]]) -> None:
    number = f"pn-{uuid.uuid4().hex[:8]}"
    pace = number_pace(1, 0.0)
    buckets = Buckets(outbound_db)
    [(first, stored)] = (await buckets.number_permits(number, pace, 0.0, 1)).starts
    refused = await buckets.number_permits(number, pace, 0.0, 1)
    assert refused.starts == []
    assert refused.next_at >= first + 0.99
    await buckets.unused_start(number, stored)
    [(again, _)] = (await buckets.number_permits(number, pace, 0.0, 1)).starts
    assert again < first + 0.5


@pytest.mark.parametrize("count", [1, 4, 12])
async def test_the_database_hands_out_the_starts_the_domain_rule_gives(
    outbound_db: AsyncDatabase[dict[str, Any]], count: int
) -> None:
    """One round trip for several callers: the server's loop and `domain.permits` agree, start for start."""
    number = f"pn-{uuid.uuid4().hex[:8]}"
    pace = number_pace(10, 0.04)
    grant = await Buckets(outbound_db).number_permits(number, pace, 0.5, count)
    stored = [s / 1000 for _, s in grant.starts]
    expected = permits((), stored[0], pace, count=count, lead=0.5)  # a fresh bucket's first start is its `now`
    assert stored == pytest.approx(list(expected.granted), abs=1e-3)
    assert len(stored) == min(count, 7)  # 0.5 s ahead at 0.8 x 1.04 / 10 s apart
    assert (await Buckets(outbound_db).number_permits(number, pace, 0.0, count)).starts == []


async def test_the_database_reacts_to_130429s_as_the_domain_rule_does(
    outbound_db: AsyncDatabase[dict[str, Any]],
) -> None:
    """A single 130429 pauses the number; another once the pause is over halves its pace too."""
    number = f"pn-{uuid.uuid4().hex[:8]}"
    buckets = Buckets(outbound_db)
    expected = RateLimited(0.0, 0.0, 0.0)
    for pause, then_wait in [(0.3, 0.05), (0.2, 0.4), (0.2, 0.0)]:
        await buckets.slow_number(number, pause, 5.0)
        stored = await outbound_db["number_buckets"].find_one({"_id": number})
        assert stored is not None
        expected = after_rate_limit(stored["struck_at"] / 1000, pause, 5.0, expected)
        assert stored["paused_until"] / 1000 == pytest.approx(expected.paused_until, abs=1e-3)
        assert stored.get("slow_until", 0) / 1000 == pytest.approx(expected.slow_until, abs=1e-3)
        await asyncio.sleep(then_wait)
    assert expected.slow_until > 0  # the second came after the first's pause: the number runs at half pace
