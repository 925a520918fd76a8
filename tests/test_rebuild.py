"""`waflow-admin rebuild <service>`: outbound's and conversation's contacts projections made again from
contacts.v1 (real Kafka, real database server), on topics and databases of the test's own, so that no live
consumer writes the projections meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection
from waflow_common import rebuild, topics
from waflow_common.events.contacts import ContactChangedEvent, ContactSnapshot
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings
from waflow_conversation.main import DATABASE as CONVERSATION
from waflow_outbound.repository import CONTACTS, DATABASE
from waflow_testing.fixtures import isolated_env, settings_for

pytestmark = pytest.mark.integration

TENANT = "tenant-rebuild"
NEEDED = [spec for spec in topics.TOPICS if spec.name in (topics.CONTACTS, topics.TENANTS)]


def contact_changed(wa_id: str, *, version: int, blacklisted: bool) -> ContactChangedEvent:
    return ContactChangedEvent.new(
        tenant_id=TENANT,
        payload=ContactSnapshot(
            contact_id=f"ct_{wa_id}",
            wa_id=wa_id,
            phone_e164=f"+{wa_id}",
            name=f"name {version}",
            blacklisted=blacklisted,
            deleted=blacklisted,
            updated_at=datetime.now(UTC),
            version=version,
        ),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def env(settings_env: dict[str, str]) -> dict[str, str]:
    return isolated_env(settings_env, "rebuild")


@dataclass
class Projections:
    outbound: AsyncCollection[dict[str, Any]]
    conversation: AsyncCollection[dict[str, Any]]

    async def shown(self) -> tuple[dict[str, tuple[int, bool]], dict[str, tuple[int, str]]]:
        """Each contact's (version, blacklisted) in outbound and (version, name) in conversation."""
        outbound = {
            d["contact_id"]: (d["version"], d["blacklisted"]) async for d in self.outbound.find({"tenant_id": TENANT})
        }
        conversation = {
            d["view"]["contact_id"]: (d["version"], d["view"]["name"])
            async for d in self.conversation.find({"tenant_id": TENANT})
        }
        return outbound, conversation


@pytest_asyncio.fixture(loop_scope="session")
async def projections(env: dict[str, str]) -> AsyncIterator[Projections]:
    settings = settings_for(CommonSettings, env)
    mongo = make_mongo_client(settings)
    try:
        yield Projections(
            service_database(mongo, settings, DATABASE)[CONTACTS],
            service_database(mongo, settings, CONVERSATION)["contacts"],
        )
    finally:
        await mongo.close()


async def publish(settings: CommonSettings) -> None:
    """Three customers' snapshots (one changed twice), plus a record that is no event and an unknown type."""
    await ensure_topics(settings, NEEDED)
    broker = make_broker(settings, client_id="rebuild-tests")
    await broker.start()
    try:
        await EventPublisher(broker, settings).publish_many(
            [
                contact_changed("15550001", version=1, blacklisted=False),
                contact_changed("15550001", version=2, blacklisted=True),
                contact_changed("15550002", version=1, blacklisted=True),
                contact_changed("15550003", version=1, blacklisted=False),
            ]
        )
    finally:
        await broker.stop()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        name = settings.topic(topics.CONTACTS)
        await producer.send_and_wait(name, b"not json", key=b"x")
        unknown = {"event_type": "contact.merged", "schema_version": 1, "event_id": "e", "payload": {}}
        await producer.send_and_wait(name, json.dumps(unknown).encode(), key=b"y")
    finally:
        await producer.stop()


async def admin(env: dict[str, str], *args: str) -> tuple[int | None, str, str]:
    """waflow-admin in a process of its own (the services' projections are found by their entry points)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "waflow_common.admin", *args, env=os.environ | env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode(), err.decode()


async def test_lost_projections_are_rebuilt_from_the_compacted_topic_once(
    env: dict[str, str], projections: Projections
) -> None:
    settings = settings_for(CommonSettings, env)
    await publish(settings)

    # The command line, dry: every record read and counted, nothing written.
    code, out, _ = await admin(env, "rebuild", "outbound", "--dry-run")
    assert code == 0
    (line,) = out.splitlines()
    counted = json.loads(line)
    assert (counted["read"], counted["applied"]) == (6, 4)
    assert (counted["invalid"], counted["skipped"], counted["dry_run"]) == (1, 1, True)
    assert await projections.shown() == ({}, {})

    for service in ("outbound", "conversation"):
        (done,) = await rebuild.rebuild(settings, service)
        assert (done.read, done.applied, done.invalid, done.skipped) == (6, 4, 1, 1)
    expected = (
        {"ct_15550001": (2, True), "ct_15550002": (1, True), "ct_15550003": (1, False)},
        {"ct_15550001": (2, "name 2"), "ct_15550002": (1, "name 1"), "ct_15550003": (1, "name 1")},
    )
    assert await projections.shown() == expected

    # Lost again in part: a rebuild restores what is missing and leaves the rest as it was.
    await projections.outbound.delete_one({"tenant_id": TENANT, "contact_id": "ct_15550002"})
    await projections.conversation.delete_many({"tenant_id": TENANT, "version": 2})
    for service in ("outbound", "conversation", "outbound"):
        await rebuild.rebuild(settings, service)
    assert await projections.shown() == expected


async def test_a_service_without_projections_is_refused_with_the_ones_that_have_some(env: dict[str, str]) -> None:
    with pytest.raises(rebuild.RebuildError, match="conversation, outbound"):
        await rebuild.rebuild(settings_for(CommonSettings, env), "ingest")
    code, _, err = await admin(env, "rebuild", "ingest")
    assert code == 2
    assert "ingest has no projections" in err
