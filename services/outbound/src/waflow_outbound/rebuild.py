"""Outbound's projections, for `waflow-admin rebuild outbound` (waflow_common.rebuild): each contact's blacklist
state and ids, from contacts.v1, applied by the live consumer's own guarded write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial

from waflow_common import topics
from waflow_common.leases import instance_id
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.rebuild import Projection
from waflow_common.settings import CommonSettings

from waflow_outbound.handlers import apply_contact, contacts_adapter
from waflow_outbound.repository import DATABASE, OutboundRepository


@asynccontextmanager
async def projections(settings: CommonSettings) -> AsyncIterator[list[Projection]]:
    mongo = make_mongo_client(settings)
    try:
        # Only the contacts projection is written: the claim settings of sending do not matter here.
        repository = OutboundRepository(
            service_database(mongo, settings, DATABASE), instance_id(), claim_seconds=60, finished_kept=timedelta(1)
        )
        yield [Projection("contacts", topics.CONTACTS, contacts_adapter, partial(apply_contact, repository))]
    finally:
        await mongo.close()
