"""Two outbound processes on one database and one consumer group: each request is sent exactly once with one
outcome, and together they never exceed the number's rate in any second (counted at the simulator)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import (
    TENANT_A,
    SeededTenant,
    TopicReader,
    isolated_env,
    put_test_app,
    put_test_tenant,
    settings_for,
)
from waflow_testing.traffic import busiest_second

from .conftest import Results, Simulator, configure_simulator, goodbye, new_wa_id, send_requested
from .test_restart import outbound_process, wait_ready

pytestmark = pytest.mark.integration

RATE = 10
TENANT_D = SeededTenant(
    "tenant-d",
    "wf_test_key_d",
    TENANT_A.app_id,
    TENANT_A.app_secret,
    TENANT_A.verify_token,
    "118273645500444",
    "104882910300444",
    "15550004444",
    "access-token-tenant-d",
)


async def test_two_instances_send_each_request_once_within_the_numbers_rate(
    settings_env: dict[str, str], simulator: Simulator
) -> None:
    env = isolated_env(settings_env, "twoinst")
    settings = settings_for(CommonSettings, env)
    await ensure_topics(settings)
    async with Admin(settings) as admin:
        await put_test_app(admin)
        await put_test_tenant(admin, TENANT_D, rate_per_second=RATE)
    await configure_simulator(simulator.client, (TENANT_D,), rate=RATE)
    commands = [send_requested(TENANT_D, new_wa_id(), goodbye(f"number {i}")) for i in range(60)]
    ids = [c.payload.request_id for c in commands]
    broker = make_broker(settings, client_id="outbound-two-instances-test")
    await broker.start()
    try:
        async with TopicReader(settings, topics.OUTBOUND_RESULTS) as reader:
            results = Results(reader)
            with outbound_process(env, simulator.url) as first, outbound_process(env, simulator.url) as second:
                await asyncio.gather(wait_ready(first), wait_ready(second))
                await asyncio.sleep(3.0)  # both joined the consumer group: partitions are split between them
                publisher = EventPublisher(broker, settings)
                # Every request twice (a redelivery, a producer retry): still one effect each.
                await publisher.publish_many(commands)
                await publisher.publish_many(commands[::2])
                found = await results.wait_for(*ids, timeout=90)
                await asyncio.sleep(1.0)  # a second result, if any, would arrive now
                results.seen.extend(await reader.read(1, timeout=1.0))
    finally:
        await broker.stop()

    assert set(found) == set(ids)
    assert {r["event_type"] for r in found.values()} == {"send.accepted"}, found
    assert max(results.count(i) for i in ids) == 1
    sent = [s for s in await simulator.client.sent(TENANT_D.phone_number_id) if s.wamid is not None]
    received = Counter(s.body["biz_opaque_callback_data"] for s in sent)
    assert set(received) == set(ids)
    assert max(received.values()) == 1, received
    assert busiest_second([s.received_at for s in sent]) <= RATE
