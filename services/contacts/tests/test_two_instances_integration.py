"""Two contacts instances (separate OS processes, each with its own MongoDB client and relay) hammer the same
contacts at once: tag adds and removes, field edits, list joins, inbound messages, and a delete racing them.

Nothing is lost, the delete holds, and every contact.changed version exists once (one event id per version,
versions 1..n without a gap; the last one is what is stored).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.events.envelope import utcnow
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings
from waflow_contacts import domain
from waflow_contacts.book import Cause, ContactBook
from waflow_contacts.domain import FieldDefinition, FieldType
from waflow_contacts.lists import StaticLists
from waflow_contacts.main import ContactsSettings
from waflow_contacts.repository import ContactRepository
from waflow_testing.fixtures import TopicReader, settings_for

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("race_worker.py")
CONTACTS = 8
TAGS, EDITS, MESSAGES = 6, 5, 5


@pytest_asyncio.fixture(loop_scope="session")
async def repository(settings_env: dict[str, str]) -> AsyncIterator[ContactRepository]:
    settings = settings_for(ContactsSettings, settings_env)
    client = make_mongo_client(settings)
    repo = ContactRepository(service_database(client, settings, "waflow_contacts"))
    await repo.ensure_indexes()
    try:
        yield repo
    finally:
        await client.close()


async def run_workers(settings_env: dict[str, str], work: dict[str, Any]) -> None:
    env = os.environ | settings_env
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps(work | {"worker": w}),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for w in (0, 1)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert (await asyncio.wait_for(worker.stdout.readline(), 60)).strip() == b"ready"
        for worker in workers:  # both at once
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        for worker in workers:
            assert worker.stdout is not None
            assert (await asyncio.wait_for(worker.stdout.readline(), 120)).strip() == b"done"
            # Stopping flushes the worker's producer, which waits for a record in flight up to its request timeout
            # (aiokafka: 40 s) while a busy broker moves partition leaders.
            assert await asyncio.wait_for(worker.wait(), 90) == 0
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()


async def test_two_instances_racing_on_the_same_contacts_lose_nothing_and_the_delete_holds(
    settings_env: dict[str, str], topics_ready: CommonSettings, repository: ContactRepository
) -> None:
    tenant = f"race-{uuid.uuid4().hex[:8]}"
    # The setup's events stay parked (no relay here): the instances' relays publish them with their own.
    book = ContactBook(repository, lambda *_: None, utcnow)
    lists = StaticLists(repository, book)
    for key in ("f0", "f1"):
        await book.define_field(tenant, FieldDefinition(key, key.upper(), FieldType.TEXT))
    list_ids = [(await lists.create(tenant, f"L{w}")).list_id for w in (0, 1)]
    people = []
    for _ in range(CONTACTS):
        phone = domain.normalise_phone(f"+34 6{random.randrange(10**7, 10**8)}")
        made = await book.create(tenant, phone, {}, [f"pre-{i}" for i in range(TAGS)], Cause("setup"))
        people.append({"contact_id": made.contact.contact_id, "wa_id": made.contact.wa_id})
    doomed = [p["contact_id"] for p in people[::2]]

    async with TopicReader(topics_ready, topics.CONTACTS) as changes:
        await run_workers(settings_env, {"tenant": tenant, "contacts": people, "doomed": doomed, "lists": list_ids})
        stored = {p["contact_id"]: await book.get(tenant, p["contact_id"]) for p in people}
        expected = sum(c.version for c in stored.values())
        by_version: defaultdict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
        for _ in range(40):  # until every stored version has been seen (a redelivered duplicate is harmless)
            for event in await changes.read(1000, timeout=0.5, where=lambda v: v.get("tenant_id") == tenant):
                payload = event["payload"]
                by_version[(payload["contact_id"], payload["version"])][event["event_id"]] = payload
            if len(by_version) >= expected:
                break

    for contact_id, contact in stored.items():
        assert set(contact.tags) == {f"w{w}-{i}" for w in (0, 1) for i in range(TAGS)}, contact.tags
        assert contact.fields == {"f0": f"v{EDITS - 1}", "f1": f"v{EDITS - 1}"}
        assert {r.list_id for r in contact.lists} == set(list_ids)
        assert contact.profile_name == f"P{MESSAGES - 1}"
        assert (contact.deleted, contact.blacklisted) == ((contact_id in doomed),) * 2
        # 1 create (with the pre- tags), tag adds and removes, field edits, 2 list joins, messages (each moves
        # last_seen), and the delete.
        assert contact.version == 1 + 2 * TAGS + TAGS + 2 * EDITS + 2 + MESSAGES + (contact_id in doomed)

    for contact_id, contact in stored.items():
        versions = sorted(v for c, v in by_version if c == contact_id)
        assert versions == list(range(1, contact.version + 1)), contact_id  # every version, none twice
        assert all(len(by_version[(contact_id, v)]) == 1 for v in versions)  # one event per version
        (last,) = by_version[(contact_id, contact.version)].values()
        assert last == json.loads(contact.model_dump_json())
        deleted = [next(iter(by_version[(contact_id, v)].values()))["deleted"] for v in versions]
        if contact_id in doomed:  # once deleted, every later version is deleted: nothing resurrected it
            assert deleted[deleted.index(True) :] == [True] * (len(deleted) - deleted.index(True))
        else:
            assert not any(deleted)
