"""Conversation's projections, for `waflow-admin rebuild conversation` (waflow_common.rebuild): each contact's
name, tags and lists as its chats show them, from contacts.v1, applied by the live consumer's own code.

The tenant registry gives each tenant's numbers (a customer has one chat per number). The chats' outbox entries
such a write parks are published by the running instances' relays, which rescan for them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from waflow_common import topics
from waflow_common.events.contacts import ContactChangedEvent
from waflow_common.events.envelope import utcnow
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.rebuild import Projection
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_conversation.handlers import contact_adapter
from waflow_conversation.main import DATABASE, tenant_numbers
from waflow_conversation.repository import ChatRepository, Collections


@asynccontextmanager
async def projections(settings: CommonSettings) -> AsyncIterator[list[Projection]]:
    registry = TenantRegistry(settings, SecretBox(settings.waflow_secrets_key.get_secret_value()))
    mongo = make_mongo_client(settings)
    await registry.start()
    try:
        collections = Collections(service_database(mongo, settings, DATABASE))
        chats = ChatRepository(collections, utcnow, lambda _collection, _doc_id: None, tenant_numbers(registry))

        async def apply(event: ContactChangedEvent) -> None:
            if event.tenant_id is not None:  # the consumer dead-letters one without
                await chats.apply_contact(event.tenant_id, event.payload)

        yield [Projection("contacts", topics.CONTACTS, contact_adapter, apply)]
    finally:
        await registry.stop()
        await mongo.close()
