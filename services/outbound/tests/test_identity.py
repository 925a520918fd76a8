"""A customer known only by a BSUID has a queue of their own (their wa_id is empty)."""

from __future__ import annotations

from datetime import UTC, datetime

from waflow_outbound.lanes import Job

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def test_two_bsuid_only_customers_have_their_own_queue() -> None:
    jobs = [Job("send", "t", f"r{n}", "pn", "", T0, "c", user_id=f"US.{n}") for n in (1, 2)]
    assert jobs[0].customer != jobs[1].customer
