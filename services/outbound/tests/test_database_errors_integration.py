"""Outbound when the database answers with connection errors around a call: nothing is lost, nothing is called
twice, and a call never made is never reported as `outcome_unknown`.

The errors are injected into the repository of the outbound served here (on the real database server), at the
two moments a real outage can hit: after the attempt is recorded as calling but before the call, and after
WhatsApp answered but before the answer is stored.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import AutoReconnect
from waflow_common.kafka import EventPublisher
from waflow_outbound.repository import OutboundRepository
from waflow_testing.fixtures import SeededTenant

from .conftest import Results, Simulator, goodbye, new_wa_id, send_requested

pytestmark = pytest.mark.integration


async def test_a_database_error_between_the_record_and_the_call_delays_the_send_but_neither_fails_nor_repeats_it(
    outbound: str,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = tenants[1]
    wa_id = new_wa_id()
    real = OutboundRepository.blacklisted
    reads = 0

    async def unreachable_at_the_second_and_third_gate(
        self: OutboundRepository, tenant_id: str, customer: str, user_id: str | None = None
    ) -> bool:
        nonlocal reads
        if customer == wa_id:
            reads += 1
            if reads in (2, 3):  # the gate after the attempt is recorded, then the first gate of the retry
                raise AutoReconnect("connection refused (injected)")
        return await real(self, tenant_id, customer, user_id)

    monkeypatch.setattr(OutboundRepository, "blacklisted", unreachable_at_the_second_and_third_gate)
    command = send_requested(tenant, wa_id, goodbye())
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id, timeout=15)

    assert reads >= 4
    assert found[command.payload.request_id]["event_type"] == "send.accepted"
    assert len(await simulator.client.sent(tenant.phone_number_id, to=wa_id)) == 1


async def test_a_database_error_after_whatsapp_answered_stores_the_answer_once_the_database_is_back(
    outbound: str,
    simulator: Simulator,
    publisher: EventPublisher,
    results: Results,
    tenants: tuple[SeededTenant, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = tenants[1]
    wa_id = new_wa_id()
    command = send_requested(tenant, wa_id, goodbye())
    ours = f"{tenant.tenant_id}:{command.payload.request_id}"
    real = OutboundRepository.finish
    failures = 0

    async def unreachable_twice(self: OutboundRepository, key: str, *args: Any) -> bool:
        nonlocal failures
        if key == ours and failures < 2:
            failures += 1
            raise AutoReconnect("connection refused (injected)")
        return await real(self, key, *args)

    monkeypatch.setattr(OutboundRepository, "finish", unreachable_twice)
    await publisher.publish(command)

    found = await results.wait_for(command.payload.request_id, timeout=15)

    assert failures == 2
    assert found[command.payload.request_id]["event_type"] == "send.accepted"
    assert len(await simulator.client.sent(tenant.phone_number_id, to=wa_id)) == 1
    assert results.count(command.payload.request_id) == 1
