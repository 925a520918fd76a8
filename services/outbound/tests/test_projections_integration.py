"""The window and the blacklist as the database holds them: every id of a customer, forward only, newest
version wins, whichever instance wrote them (two repositories on two clients share one database)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings
from waflow_outbound.repository import OutboundRepository
from waflow_testing.fixtures import settings_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def two(settings_env: dict[str, str]) -> AsyncIterator[tuple[OutboundRepository, OutboundRepository]]:
    """Two instances' repositories: separate clients, one database."""
    settings = settings_for(CommonSettings, settings_env)
    clients: list[AsyncMongoClient[dict[str, Any]]] = [make_mongo_client(settings) for _ in range(2)]
    databases = [service_database(c, settings, "waflow_outbound") for c in clients]
    repositories = [OutboundRepository(d) for d in databases]
    await repositories[0].create_indexes()
    try:
        yield repositories[0], repositories[1]
    finally:
        for client in clients:
            await client.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_the_window_only_moves_forward_under_concurrent_writers(
    two: tuple[OutboundRepository, OutboundRepository],
) -> None:
    a, b = two
    t = tenant()
    offsets = random.Random(7).sample(range(-100_000, 100_000), 40)
    await asyncio.gather(
        *(
            (a if n % 2 else b).record_inbound(t, "pn", "15550001", f"w{n}", T0 + timedelta(seconds=o))
            for n, o in enumerate(offsets)
        )
    )
    assert await a.last_inbound_at(t, "pn", "15550001") == T0 + timedelta(seconds=max(offsets))
    assert await b.last_inbound_at(t, "pn", "15550001") == T0 + timedelta(seconds=max(offsets))
    assert await a.last_inbound_at("other-tenant", "pn", "15550001") is None
    assert await a.last_inbound_at(t, "other-number", "15550001") is None


async def test_the_newest_contact_version_wins_whatever_the_order(
    two: tuple[OutboundRepository, OutboundRepository],
) -> None:
    a, b = two
    t = tenant()
    snapshots = [(2, True), (1, False), (3, True), (2, False)]
    await asyncio.gather(
        *((a if v % 2 else b).record_contact(t, "15550001", v, bl, contact_id="c1") for v, bl in snapshots)
    )
    assert await b.blacklisted(t, "15550001")
    assert not await a.blacklisted("other-tenant", "15550001")
    await a.record_contact(t, "15550001", 4, False, contact_id="c1")  # restored
    assert not await b.blacklisted(t, "15550001")


async def test_a_blacklisted_number_blocks_each_of_its_forms_and_the_customers_bsuid(
    two: tuple[OutboundRepository, OutboundRepository],
) -> None:
    a, b = two
    t = tenant()
    await a.record_contact(t, "5215512345678", 2, True, contact_id="c1", user_id="US.1")
    assert await b.blacklisted(t, "525512345678")
    assert await b.blacklisted(t, "5215512345678")
    assert await b.blacklisted(t, "", "US.1")
    assert not await b.blacklisted(t, "", "US.2")
    assert not await b.blacklisted(t, "")
    # An older snapshot still names the contact's ids, but does not change its state.
    await b.record_contact(t, "15550009", 1, False, contact_id="c1")
    assert await a.blacklisted(t, "15550009")


async def test_two_bsuid_only_customers_have_their_own_window(
    two: tuple[OutboundRepository, OutboundRepository],
) -> None:
    a, b = two
    t = tenant()
    await a.record_inbound(t, "pn", "", "w1", T0, user_id="US.1")
    assert await b.last_inbound_at(t, "pn", "", "US.1") == T0
    assert await b.last_inbound_at(t, "pn", "", "US.2") is None
    await b.record_inbound(t, "pn", "15550001", "w2", T0 + timedelta(minutes=1), user_id="US.2")
    assert await a.last_inbound_at(t, "pn", "15550001") == T0 + timedelta(minutes=1)
