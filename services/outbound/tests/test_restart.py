"""A killed outbound process resumes where it stopped without sending anything twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import (
    TENANT_A,
    SeededTenant,
    TopicReader,
    free_port,
    isolated_env,
    put_test_app,
    put_test_tenant,
    settings_for,
)

from .conftest import Results, Simulator, configure_simulator, goodbye, new_wa_id, send_requested

pytestmark = pytest.mark.integration

# A tenant of its own with a slow number (2 messages/s), so a queue is still waiting when the process dies.
TENANT_C = SeededTenant(
    "tenant-c",
    "wf_test_key_c",
    TENANT_A.app_id,
    TENANT_A.app_secret,
    TENANT_A.verify_token,
    "118273645500333",
    "104882910300333",
    "15550003333",
    "access-token-tenant-c",
)


@contextmanager
def outbound_process(settings_env: dict[str, str], simulator_url: str) -> Iterator[str]:
    port = free_port()
    env = (
        os.environ
        | settings_env
        | {
            "WHATSAPP_API_BASE_URL": simulator_url,
            "OUTBOUND_PORT": str(port),
            "OUTBOUND_RETRY_BASE_SECONDS": "0.05",
        }
    )
    process = subprocess.Popen([sys.executable, "-m", "waflow_outbound.main"], env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(2400):  # a process starting on a busy machine can take a while
            try:
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("outbound did not start")


async def test_a_killed_process_resumes_without_sending_twice(
    settings_env: dict[str, str], simulator: Simulator
) -> None:
    # Topics and a database of its own: another outbound of this session (the in-process one other tests
    # use) would otherwise share the consumer groups, take some of the commands and never be killed.
    env = isolated_env(settings_env, "restart")
    settings = settings_for(CommonSettings, env)
    await ensure_topics(settings)
    async with Admin(settings) as admin:
        await put_test_app(admin)
        await put_test_tenant(admin, TENANT_C, rate_per_second=2)
    broker = make_broker(settings, client_id="outbound-restart-test")
    await broker.start()
    try:
        async with TopicReader(settings, topics.OUTBOUND_RESULTS) as reader:
            await killed_and_resumed(env, simulator, EventPublisher(broker, settings), Results(reader))
    finally:
        await broker.stop()


async def killed_and_resumed(
    settings_env: dict[str, str], simulator: Simulator, publisher: EventPublisher, results: Results
) -> None:
    await configure_simulator(simulator.client, (TENANT_C,))
    # The first call hangs inside "WhatsApp" long enough for the process to be killed during it.
    await simulator.client.inject_fault(TENANT_C.phone_number_id, delay_seconds=4.0)
    commands = [send_requested(TENANT_C, new_wa_id(), goodbye(f"number {i}")) for i in range(8)]
    ids = [c.payload.request_id for c in commands]

    with outbound_process(settings_env, simulator.url) as url:
        await wait_ready(url)
        await publisher.publish_many(commands)
        for _ in range(400):
            if len(await simulator.client.sent(TENANT_C.phone_number_id)) >= 2:
                break
            await asyncio.sleep(0.05)
        # exiting kills the process (SIGKILL: no shutdown code runs), one call in flight, others queued

    first_life = {r["payload"]["request_id"] for r in results.seen}
    with outbound_process(settings_env, simulator.url) as url:
        await wait_ready(url)
        found = await results.wait_for(*ids, timeout=60)

    assert set(found) == set(ids), f"requests without a result: {set(ids) - set(found)}"
    reasons = {rid: r["payload"].get("reason", "accepted") for rid, r in found.items()}
    assert "outcome_unknown" in reasons.values(), reasons  # the call cut off by the kill
    assert set(reasons.values()) <= {"accepted", "outcome_unknown"}
    assert len(first_life) < len(ids)  # some were still to be sent when the process died

    # Wait for the hung call to finish inside the simulator, then count what WhatsApp received per request.
    for _ in range(200):
        sent = await simulator.client.sent(TENANT_C.phone_number_id)
        if len(sent) >= sum(1 for r in reasons.values() if r == "accepted") + 1:
            break
        await asyncio.sleep(0.05)
    received = Counter(s.body["biz_opaque_callback_data"] for s in sent)
    assert max(received.values()) == 1, received
    assert {rid for rid, r in reasons.items() if r == "accepted"} <= set(received)
