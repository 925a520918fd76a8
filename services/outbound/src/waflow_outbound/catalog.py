"""The template catalog: per-WABA copies of Meta's templates in the database, synced periodically by whichever
instance holds the sync lease, and at once on template webhooks and tenant changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from typing import Any

import httpx
from pymongo.errors import PyMongoError
from waflow_common.events.envelope import Clock
from waflow_common.leases import Leases, run_leased
from waflow_common.tenants import Tenant, TenantRegistry

from waflow_outbound.domain_templates import OPEN_TEMPLATE, TemplateShape, shape_of
from waflow_outbound.repository import Document, OutboundRepository
from waflow_outbound.whatsapp import TemplateListError, WhatsAppClient

log = logging.getLogger(__name__)

SYNC_LEASE = "outbound-template-sync"


def builtin_id(waba_id: str, name: str, language: str) -> str:
    return f"{waba_id}.{name}.{language}"


def template_document(waba_id: str, listed: dict[str, Any], *, source: str, synced_at: datetime) -> Document:
    shape = shape_of(listed)
    return {
        "template_id": str(listed.get("id") or builtin_id(waba_id, shape.name, shape.language)),
        "waba_id": waba_id,
        "name": shape.name,
        "language": shape.language,
        "status": str(listed.get("status", "APPROVED")).upper(),
        "category": str(listed.get("category", "UTILITY")).upper(),
        "parameter_format": str(listed.get("parameter_format") or "POSITIONAL").upper(),
        # As JSON text: kept exactly as Meta sent it, whatever it nests.
        "components_json": json.dumps(listed.get("components") or []),
        "content": shape.agent_text(),
        "placeholders": [p.name for p in shape.placeholders],
        "source": source,
        "synced_at": synced_at,
    }


def components_of(document: Document) -> list[dict[str, Any]]:
    components: list[dict[str, Any]] = json.loads(document["components_json"])
    return components


class TemplateCatalog:
    def __init__(
        self,
        repository: OutboundRepository,
        whatsapp: WhatsAppClient,
        registry: TenantRegistry,
        clock: Clock,
        leases: Leases,
        *,
        interval_seconds: float,
    ) -> None:
        self._repository = repository
        self._whatsapp = whatsapp
        self._registry = registry
        self._clock = clock
        self._leases = leases
        self._interval = interval_seconds
        self._lease_seconds = interval_seconds * 3 + 10
        self._synced_at = -interval_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._due: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def find(self, tenant_id: str, waba_id: str, name: str, language: str) -> Document | None:
        """The template as the last sync (by any instance) stored it."""
        found = await self._repository.template(tenant_id, waba_id, name, language)
        if found is None and name == OPEN_TEMPLATE["name"] and language == OPEN_TEMPLATE["language"]:
            return template_document(waba_id, OPEN_TEMPLATE, source="builtin", synced_at=self._clock())
        return found

    async def for_tenant(self, tenant: Tenant) -> list[Document]:
        """The tenant's templates as stored, plus open_template in any WABA whose sync has not brought it."""
        documents = await self._repository.templates(tenant.tenant_id)
        have = {(d["waba_id"], d["name"], d["language"]) for d in documents}
        for waba_id in tenant.record.waba_ids:
            if (waba_id, OPEN_TEMPLATE["name"], OPEN_TEMPLATE["language"]) not in have:
                builtin = template_document(waba_id, OPEN_TEMPLATE, source="builtin", synced_at=self._clock())
                documents.append(builtin | {"tenant_id": tenant.tenant_id})
        return documents

    @staticmethod
    def shape(document: Document) -> TemplateShape:
        return shape_of(document | {"components": components_of(document)})

    async def sync_waba(self, tenant: Tenant, waba_id: str) -> int:
        listed = await self._whatsapp.list_templates(waba_id, tenant.access_token)
        now = self._clock()
        documents = [template_document(waba_id, t, source="meta", synced_at=now) for t in listed]
        open_key = (OPEN_TEMPLATE["name"], OPEN_TEMPLATE["language"])
        if not any((d["name"], d["language"]) == open_key for d in documents):
            documents.append(template_document(waba_id, OPEN_TEMPLATE, source="builtin", synced_at=now))
        await self._repository.replace_templates(tenant.tenant_id, waba_id, documents)
        return len(documents)

    async def sync_tenant(self, tenant: Tenant) -> int:
        total = 0
        for waba_id in tenant.record.waba_ids:
            try:
                total += await self.sync_waba(tenant, waba_id)
            except (TemplateListError, httpx.HTTPError, PyMongoError) as exc:
                log.warning("template sync failed", extra={"tenant_id": tenant.tenant_id, "error": str(exc)[:300]})
        return total

    async def sync_all(self) -> None:
        await asyncio.gather(*(self.sync_tenant(t) for t in self._registry.tenants()))
        self._synced_at = asyncio.get_running_loop().time()

    async def first_sync(self) -> None:
        """At start: sync now if no other instance holds the sync lease (then its copies are in the database)."""
        if await self._leases.acquire(SYNC_LEASE, self._lease_seconds):
            await self.sync_all()

    async def _periodic(self) -> None:
        if asyncio.get_running_loop().time() - self._synced_at >= self._interval / 2:  # not just done at start
            await self.sync_all()

    def request_sync(self, tenant_id: str, waba_id: str | None = None) -> None:
        """Asks for a sync soon (template webhooks, new tenants); repeated asks collapse into one."""
        self._due.put_nowait((tenant_id, waba_id or ""))

    async def _sync_asked(self) -> None:
        """Syncs what was asked for. Every instance hears of a tenant change, so a per-tenant lease lets one of
        them sync it while the others skip."""
        while True:
            first = await self._due.get()
            await asyncio.sleep(0.2)  # let a burst of webhooks collapse
            due = {first[0]}
            while not self._due.empty():
                due.add(self._due.get_nowait()[0])
            for tenant_id in due:
                tenant = self._registry.tenant(tenant_id)
                name = f"outbound-template-sync:{tenant_id}"
                try:
                    if tenant is None or not await self._leases.acquire(name, 120.0):
                        continue
                    try:
                        await self.sync_tenant(tenant)
                    finally:
                        await self._leases.release(name)
                except PyMongoError as exc:
                    log.warning("template sync failed", extra={"tenant_id": tenant_id, "error": str(exc)[:300]})

    def start(self) -> None:
        """The periodic full sync runs on the one instance holding its lease (at once when it takes it)."""
        self._tasks = [
            asyncio.create_task(
                run_leased(
                    self._leases,
                    SYNC_LEASE,
                    self._periodic,
                    every=self._interval,
                    lease_seconds=self._lease_seconds,
                ),
                name="template-sync",
            ),
            asyncio.create_task(self._sync_asked(), name="template-sync-asked"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
