"""The embedded outbox under a killed process: a change stored before the kill is announced exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.settings import CommonSettings
from waflow_contacts.main import ContactsSettings, create_app
from waflow_testing.fixtures import SeededTenant, TopicReader, free_port, serve, settings_for

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def doomed_process(
    settings_env: dict[str, str], tenants: tuple[SeededTenant, SeededTenant]
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """The service as its own process, relay off: every change stays parked until the process is killed."""
    port = free_port()
    env = (
        os.environ
        | settings_env
        | {
            "CONTACTS_PORT": str(port),
            "CONTACTS_RELAY_ENABLED": "false",
            "CONTACTS_CONSUME": "false",
        }
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "waflow_contacts", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(300):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield url, process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_changes_stored_by_a_killed_process_are_published_once_by_the_next(
    doomed_process: tuple[str, asyncio.subprocess.Process],
    settings_env: dict[str, str],
    topics_ready: CommonSettings,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    doomed_url, process = doomed_process
    async with TopicReader(topics_ready, topics.CONTACTS) as changes:
        async with httpx.AsyncClient(base_url=doomed_url, headers=tenants[0].auth, timeout=30) as api:
            created = await api.post("/v1/contacts", json={"phone": "+34 699 000 111", "name": "Parked"})
            assert created.status_code == 201, created.text
            contact = created.json()
            tagged = await api.post(f"/v1/contacts/{contact['contact_id']}/tags", json={"tags": ["survivor"]})
            assert tagged.json()["version"] == 2
            refused = await api.patch(f"/v1/contacts/{contact['contact_id']}", json={"fields": {"nope": 1}})
            assert refused.status_code == 422  # a refused change parks no event
        assert await changes.read(1, timeout=1.0) == []  # nothing was relayed before the kill

        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL

        # The next process publishes what the killed one parked once it is older than the orphan age.
        settings = settings_for(
            ContactsSettings,
            settings_env,
            contacts_consume=False,
            contacts_outbox_orphan_seconds=0.5,
            contacts_outbox_rescan_seconds=0.5,
        )
        async with serve(create_app(settings)) as url:
            events = await changes.read(3, timeout=5, where=lambda v: v["payload"]["wa_id"] == "34699000111")
            async with httpx.AsyncClient(base_url=url, headers=tenants[0].auth) as api:
                stored = (await api.get(f"/v1/contacts/{contact['contact_id']}")).json()
    assert [e["payload"]["version"] for e in events] == [1, 2]  # each once; nothing for the refused change
    assert len({e["event_id"] for e in events}) == 2
    assert events[-1]["payload"] == stored == tagged.json()
