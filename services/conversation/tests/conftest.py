"""Conversation served over real HTTP against the real Kafka and database server, on topics and a database of its own.

Other services' events (message.received, message.status, contact.changed, send.accepted, ...) are published
onto the real topics exactly as those services would; the clock is injected so the window can be moved.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest_asyncio
from waflow_common.admin import Admin
from waflow_common.events.contacts import ContactChangedEvent, ContactListRef, ContactSnapshot
from waflow_common.events.envelope import Envelope, derived_event_id
from waflow_common.events.inbound import (
    MessageContext,
    MessageReceived,
    MessageReceivedEvent,
    MessageStatus,
    MessageStatusEvent,
    MetaErrorDetail,
)
from waflow_common.events.outbound import SendAccepted, SendAcceptedEvent, SendRejected, SendRejectedEvent
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.mongo import make_mongo_client, service_database
from waflow_conversation.api import ConversationContext
from waflow_conversation.main import DATABASE, ConversationSettings, create_app
from waflow_testing.fixtures import (
    TENANT_A,
    TENANT_B,
    SeededTenant,
    eventually,
    isolated_env,
    put_test_app,
    put_test_tenant,
    serve,
    settings_for,
)

T = TypeVar("T")


class FakeClock:
    """The service's clock; tests move it forward to close windows."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def new_wa_id() -> str:
    return "1555" + str(uuid.uuid4().int)[:7]


def new_wamid() -> str:
    return "wamid.TEST" + uuid.uuid4().hex


@dataclass
class Stack:
    settings: ConversationSettings
    url: str
    http: httpx.AsyncClient
    publisher: EventPublisher
    clock: FakeClock
    context: ConversationContext
    tenants: tuple[SeededTenant, SeededTenant]
    database: Any  # the service's database, read with a client of the test's own
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def a(self) -> SeededTenant:
        return self.tenants[0]

    @property
    def b(self) -> SeededTenant:
        return self.tenants[1]

    # --- what other services publish -------------------------------------------------------------------------
    def received(
        self,
        wa_id: str,
        content: dict[str, Any],
        *,
        tenant: SeededTenant = TENANT_A,
        wamid: str | None = None,
        at: datetime | None = None,
        quoted: str | None = None,
        name: str | None = "Test Customer",
    ) -> MessageReceivedEvent:
        wamid = wamid or new_wamid()
        return MessageReceivedEvent.new(
            tenant_id=tenant.tenant_id,
            payload=MessageReceived(
                wamid=wamid,
                phone_number_id=tenant.phone_number_id,
                display_phone_number=tenant.display_phone_number,
                waba_id=tenant.waba_id,
                wa_id=wa_id,
                profile_name=name,
                type=content["type"],
                timestamp=at or self.clock.now,
                content=content,  # type: ignore[arg-type]
                context=MessageContext(quoted_wamid=quoted) if quoted else None,
            ),
            event_id=derived_event_id(tenant.tenant_id, wamid),
        )

    def text(self, wa_id: str, body: str, **kwargs: Any) -> MessageReceivedEvent:
        return self.received(wa_id, {"type": "text", "body": body}, **kwargs)

    def edit(self, wa_id: str, original: str, body: str, **kwargs: Any) -> MessageReceivedEvent:
        """The customer edited the text of `original` (a wamid), as Meta reports it (REFERENCE §5)."""
        message = {"type": "text", "text": {"body": body}}
        return self.received(wa_id, {"type": "edit", "original_message_id": original, "message": message}, **kwargs)

    def revoke(self, wa_id: str, original: str, **kwargs: Any) -> MessageReceivedEvent:
        return self.received(wa_id, {"type": "revoke", "original_message_id": original}, **kwargs)

    async def stored(self, collection: str, tenant: SeededTenant, public_id: str) -> dict[str, Any] | None:
        """A document as conversation keeps it in its database (by tenant and public id or wamid)."""
        doc: dict[str, Any] | None = await self.database[collection].find_one(
            {"_id": f"{tenant.tenant_id}:{public_id}"}
        )
        return doc

    def status(
        self,
        wamid: str,
        wa_id: str,
        status: str,
        at: datetime,
        *,
        tenant: SeededTenant = TENANT_A,
        error_code: int | None = None,
        request_id: str | None = None,
    ) -> MessageStatusEvent:
        errors = [MetaErrorDetail(code=error_code, title="Re-engagement message")] if error_code else []
        return MessageStatusEvent.new(
            tenant_id=tenant.tenant_id,
            payload=MessageStatus(
                wamid=wamid,
                phone_number_id=tenant.phone_number_id,
                waba_id=tenant.waba_id,
                wa_id=wa_id,
                status=status,
                timestamp=at,
                errors=errors,
                biz_opaque_callback_data=request_id,
            ),
            event_id=derived_event_id(tenant.tenant_id, wamid, status, str(int(at.timestamp()))),
            occurred_at=at,
        )

    def accepted(self, request_id: str, wa_id: str, wamid: str, *, tenant: SeededTenant = TENANT_A) -> Envelope[Any]:
        return SendAcceptedEvent.new(
            tenant_id=tenant.tenant_id,
            payload=SendAccepted(
                request_id=request_id, phone_number_id=tenant.phone_number_id, wa_id=wa_id, wamid=wamid
            ),
        )

    def rejected(self, request_id: str, wa_id: str, reason: str, *, tenant: SeededTenant = TENANT_A) -> Envelope[Any]:
        return SendRejectedEvent.new(
            tenant_id=tenant.tenant_id,
            payload=SendRejected(
                request_id=request_id,
                phone_number_id=tenant.phone_number_id,
                wa_id=wa_id,
                reason=reason,  # type: ignore[arg-type]
                message=f"refused: {reason}",
            ),
        )

    def contact(
        self,
        wa_id: str,
        *,
        tenant: SeededTenant = TENANT_A,
        name: str | None = None,
        tags: list[str] | None = None,
        lists: list[tuple[str, str]] | None = None,
        blacklisted: bool = False,
        version: int | None = None,
    ) -> ContactChangedEvent:
        key = f"{tenant.tenant_id}:{wa_id}"
        if version is None:
            version = self.versions.get(key, 0) + 1
        self.versions[key] = max(version, self.versions.get(key, 0))
        return ContactChangedEvent.new(
            tenant_id=tenant.tenant_id,
            payload=ContactSnapshot(
                contact_id=f"ct_{wa_id}",
                wa_id=wa_id,
                phone_e164="+" + wa_id,
                name=name,
                tags=tags or [],
                lists=[ContactListRef(list_id=i, name=n) for i, n in lists or []],
                fields={"city": "Milan"},
                deleted=blacklisted,
                blacklisted=blacklisted,
                updated_at=self.clock.now,
                version=version,
            ),
        )

    async def publish(self, *events: Envelope[Any]) -> None:
        for event in events:  # one at a time: order within a partition is what the test means
            await self.publisher.publish(event)

    # --- what an agent does -------------------------------------------------------------------------------------
    async def get(self, path: str, tenant: SeededTenant = TENANT_A, **params: Any) -> httpx.Response:
        return await self.http.get(path, headers=tenant.auth, params=params)

    async def post(
        self, path: str, body: Any = None, tenant: SeededTenant = TENANT_A, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.http.post(path, json=body, headers=tenant.auth | (headers or {}))

    async def chat_for(self, wa_id: str, tenant: SeededTenant = TENANT_A) -> dict[str, Any]:
        """Waits until the chat with this customer shows up in the chat list."""

        async def find() -> dict[str, Any] | None:
            r = await self.get("/v1/chats", tenant, search=wa_id)
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return next((c for c in items if c["wa_id"] == wa_id), None)

        return await eventually(find)

    async def preview_is(self, wa_id: str, text: str, tenant: SeededTenant = TENANT_A) -> bool:
        """True once the chat's last message is this text."""
        last = (await self.chat_for(wa_id, tenant)).get("last_message")
        return bool(last and last["preview"] == text)

    async def timeline(self, chat_id: str, tenant: SeededTenant = TENANT_A, limit: int = 200) -> list[dict[str, Any]]:
        r = await self.get(f"/v1/chats/{chat_id}/messages", tenant, limit=limit)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def stack(settings_env: dict[str, str]) -> AsyncIterator[Stack]:
    env = isolated_env(settings_env, "conv")
    settings = settings_for(
        ConversationSettings, env, conversation_sweep_seconds=3600, conversation_consumer_concurrency=4
    )
    await ensure_topics(settings)
    async with Admin(settings) as admin:
        await put_test_app(admin)
        await put_test_tenant(admin, TENANT_A)
        await put_test_tenant(admin, TENANT_B, window_closing_lead_minutes=30)
    clock = FakeClock()
    app = create_app(settings, clock=clock)
    broker = make_broker(settings, client_id="conversation-tests")
    await broker.start()
    mongo = make_mongo_client(settings)
    try:
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield Stack(
                settings=settings,
                url=url,
                http=http,
                publisher=EventPublisher(broker, settings),
                clock=clock,
                context=app.state.conversation,
                tenants=(TENANT_A, TENANT_B),
                database=service_database(mongo, settings, DATABASE),
            )
    finally:
        await mongo.close()
        await broker.stop()
