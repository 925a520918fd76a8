"""Outbound's projections know a customer by every id: the blacklist and the window, without any server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from waflow_outbound.lanes import Job
from waflow_outbound.repository import OutboundRepository

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def projection() -> OutboundRepository:
    return OutboundRepository(cast(Any, None), cast(Any, None))


def test_a_blacklisted_number_blocks_each_of_its_forms_and_the_customers_bsuid() -> None:
    repo = projection()
    repo._note_contact("t", "c1", ("US.1", "5215512345678", "525512345678"), 2, True)
    assert repo.blacklisted("t", "525512345678")
    assert repo.blacklisted("t", "5215512345678")
    assert repo.blacklisted("t", "", "US.1")
    assert not repo.blacklisted("t", "", "US.2")
    assert not repo.blacklisted("t", "")
    repo._note_contact("t", "c1", ("US.1", "5215512345678", "525512345678"), 3, False)  # restored
    assert not repo.blacklisted("t", "525512345678")


def test_two_bsuid_only_customers_have_their_own_window_and_queue() -> None:
    repo = projection()
    repo._note_inbound("t", "pn", ("US.1",), T0)
    assert repo.last_inbound_at("t", "pn", "", "US.1") == T0
    assert repo.last_inbound_at("t", "pn", "", "US.2") is None
    repo._note_inbound("t", "pn", ("US.2", "15550001"), T0 + timedelta(minutes=1))
    assert repo.last_inbound_at("t", "pn", "15550001") == T0 + timedelta(minutes=1)
    jobs = [Job("send", "t", f"r{n}", "pn", "", T0, "c", user_id=f"US.{n}") for n in (1, 2)]
    assert jobs[0].customer != jobs[1].customer
