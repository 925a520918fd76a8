"""Fixtures for the contacts tests: the service served over HTTP, clients per tenant, event helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest_asyncio
from waflow_common import topics
from waflow_common.events.envelope import Envelope
from waflow_common.kafka import EventPublisher, make_broker
from waflow_common.settings import CommonSettings
from waflow_contacts.main import ContactsSettings, create_app
from waflow_testing.fixtures import SeededTenant, TopicReader, serve, settings_for

Publish = Callable[[Envelope[Any]], Awaitable[None]]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def contacts_url(settings_env: dict[str, str], tenants: tuple[SeededTenant, SeededTenant]) -> AsyncIterator[str]:
    async with serve(create_app(settings_for(ContactsSettings, settings_env))) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api_a(contacts_url: str, tenants: tuple[SeededTenant, SeededTenant]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=contacts_url, headers=tenants[0].auth, timeout=30) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api_b(contacts_url: str, tenants: tuple[SeededTenant, SeededTenant]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=contacts_url, headers=tenants[1].auth, timeout=30) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def publish(topics_ready: CommonSettings) -> AsyncIterator[Publish]:
    broker = make_broker(topics_ready, client_id="contacts-tests")
    await broker.start()
    publisher = EventPublisher(broker, topics_ready)
    try:
        yield publisher.publish
    finally:
        await broker.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def changes(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.CONTACTS) as reader:
        yield reader
