"""The template catalog: per-WABA copies of Meta's templates, synced at start, periodically and on webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import httpx
from pymongo.errors import PyMongoError
from waflow_common.events.envelope import Clock
from waflow_common.tenants import Tenant, TenantRegistry

from waflow_outbound.domain_templates import OPEN_TEMPLATE, TemplateShape, shape_of
from waflow_outbound.repository import Document, OutboundRepository
from waflow_outbound.whatsapp import TemplateListError, WhatsAppClient

log = logging.getLogger(__name__)


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
        # As JSON text: Meta's examples nest arrays, which FerretDB cannot store.
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
        *,
        interval_seconds: float,
    ) -> None:
        self._repository = repository
        self._whatsapp = whatsapp
        self._registry = registry
        self._clock = clock
        self._interval = interval_seconds
        # (tenant_id, waba_id, name, language) -> template document, for sends
        self._by_name: dict[tuple[str, str, str, str], Document] = {}
        self._task: asyncio.Task[None] | None = None
        self._due: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def _index(self, tenant_id: str, waba_id: str, documents: Iterable[Document]) -> None:
        for key in [k for k in self._by_name if k[0] == tenant_id and k[1] == waba_id]:
            del self._by_name[key]
        for d in documents:
            self._by_name[(tenant_id, waba_id, d["name"], d["language"])] = d

    async def load(self) -> None:
        for document in await self._repository.all_templates():
            self._by_name[(document["tenant_id"], document["waba_id"], document["name"], document["language"])] = (
                document
            )

    def find(self, tenant_id: str, waba_id: str, name: str, language: str) -> Document | None:
        found = self._by_name.get((tenant_id, waba_id, name, language))
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
        self._index(tenant.tenant_id, waba_id, [d | {"tenant_id": tenant.tenant_id} for d in documents])
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

    def request_sync(self, tenant_id: str, waba_id: str | None = None) -> None:
        """Asks for a sync soon (template webhooks, new tenants); repeated asks collapse into one."""
        self._due.put_nowait((tenant_id, waba_id or ""))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(self._due.get(), timeout=max(0.0, next_full - loop.time()))
                await asyncio.sleep(0.2)  # let a burst of webhooks collapse
                due = {first}
                while not self._due.empty():
                    due.add(self._due.get_nowait())
                for tenant_id, _ in due:
                    tenant = self._registry.tenant(tenant_id)
                    if tenant is not None:
                        await self.sync_tenant(tenant)
            if loop.time() >= next_full:
                await self.sync_all()
                next_full = loop.time() + self._interval

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="template-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
