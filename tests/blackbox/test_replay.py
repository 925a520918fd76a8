"""waflow-admin replay: a tenant's archived webhooks sent to ingest again change nothing that was applied."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from waflow_common.admin import main
from waflow_common.replay import replay
from waflow_testing.fixtures import FIXTURES
from waflow_testing.stack import Stack, StackTenant
from waflow_testing.traffic import dead_letters

WA_ID = "393409876543"


async def _timeline(api: httpx.AsyncClient) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    chats = (await api.get("/v1/chats", params={"limit": 200})).json()["items"]
    chat = next((c for c in chats if c["wa_id"] == WA_ID), None)
    if chat is None:
        return {}, []
    items = (await api.get(f"/v1/chats/{chat['chat_id']}/messages", params={"limit": 200})).json()["items"]
    return chat, [i for i in items if i["kind"] == "message"]


async def test_a_replay_of_a_tenants_webhooks_duplicates_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = stack.tenant_a
    since = datetime.now(UTC) - timedelta(seconds=5)
    texts = [f"replayed message {i}" for i in range(3)]
    for text in texts:
        await stack.sim.customer_message(tenant.phone_number_id, WA_ID, text=text, name="Rosa")
    async with httpx.AsyncClient(base_url=stack.url("conversation"), headers=tenant.auth, timeout=10) as api:
        for _ in range(300):
            chat, messages = await _timeline(api)
            if len(messages) == 3 and chat["unread_count"] == 3:  # the chat counts its messages a moment later
                break
            await asyncio.sleep(0.2)
        before = (chat["unread_count"], sorted(m["message_id"] for m in messages))
        until = datetime.now(UTC) + timedelta(seconds=1)

        dry = await replay(stack.settings, stack.url("ingest"), tenant.tenant_id, since, until, dry_run=True)
        assert (dry.matched, dry.sent) == (3, 0)
        done = await replay(stack.settings, stack.url("ingest"), tenant.tenant_id, since, until)
        assert (done.matched, done.sent, done.refused) == (3, 3, 0)
        other = await replay(stack.settings, stack.url("ingest"), stack.tenant_b.tenant_id, since, until)
        assert other.matched == 0  # another tenant's deliveries are not its to replay

        await asyncio.sleep(5)  # what a replay would have added has long arrived by now
        chat, messages = await _timeline(api)
        assert (chat["unread_count"], sorted(m["message_id"] for m in messages)) == before
        assert sorted(m["content"]["body"] for m in messages) == sorted(texts)
    assert await dead_letters(stack) == []

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", stack.settings.kafka_bootstrap_servers)
    monkeypatch.setenv("WAFLOW_TOPIC_PREFIX", stack.settings.waflow_topic_prefix)
    capsys.readouterr()
    args = ["replay", "--tenant", tenant.tenant_id, "--since", since.isoformat(), "--dry-run"]
    assert await asyncio.to_thread(main, [*args, "--ingest-url", stack.url("ingest")]) == 0
    # The replay's own deliveries were archived too: a log of what ingest was given.
    assert json.loads(capsys.readouterr().out)["matched"] == 6
    assert await asyncio.to_thread(main, ["replay", "--tenant", "t", "--since", "yesterday"]) == 2


async def _state(stack: Stack, tenant: StackTenant) -> dict[str, Any]:
    """What the sample payloads can have changed for a tenant: each chat's unread count and timeline (messages
    with their statuses and reactions), and each contact as a whole (a replayed change would bump its version)."""
    async with (
        httpx.AsyncClient(base_url=stack.url("conversation"), headers=tenant.auth, timeout=10) as chats_api,
        httpx.AsyncClient(base_url=stack.url("contacts"), headers=tenant.auth, timeout=10) as contacts_api,
    ):
        chats = (await chats_api.get("/v1/chats", params={"limit": 200})).json()["items"]
        timelines = {}
        for chat in chats:
            items = (await chats_api.get(f"/v1/chats/{chat['chat_id']}/messages", params={"limit": 200})).json()
            timelines[chat["chat_id"]] = (chat["unread_count"], items["items"])
        contacts = (await contacts_api.get("/v1/contacts", params={"limit": 200})).json()["items"]
    return {"timelines": timelines, "contacts": sorted(contacts, key=lambda c: str(c["contact_id"]))}


async def test_a_replay_of_metas_sample_payloads_changes_nothing(stack: Stack) -> None:
    """Every sample of tests/fixtures/whatsapp (messages of each type, statuses, a batch across numbers, a
    template status), delivered as Meta would, then replayed: not one message, status, count or contact more."""
    tenant = stack.tenant_a
    since = datetime.now(UTC) - timedelta(seconds=1)
    samples = sorted(FIXTURES.glob("whatsapp/*.json"))
    async with httpx.AsyncClient(timeout=10) as http:
        for sample in samples:
            raw = json.dumps(json.loads(sample.read_text()), separators=(",", ":")).encode()
            signature = "sha256=" + hmac.new(tenant.app.app_secret.encode(), raw, hashlib.sha256).hexdigest()
            answer = await http.post(
                stack.webhook_url(tenant.app.app_id),
                content=raw,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            )
            assert answer.status_code == 200, f"{sample.name}: {answer.status_code} {answer.text[:300]}"
    letters = len(await dead_letters(stack))

    settled, previous = None, None
    for _ in range(60):  # settled: the same state twice, two seconds apart, with the samples' messages in it
        await asyncio.sleep(2)
        current = await _state(stack, tenant)
        if current == previous and sum(len(items) for _, items in current["timelines"].values()) >= 15:
            settled = current
            break
        previous = current
    assert settled is not None, "the samples' effects did not settle"

    done = await replay(stack.settings, stack.url("ingest"), tenant.tenant_id, since, datetime.now(UTC))
    assert (done.matched, done.sent, done.refused) == (len(samples), len(samples), 0)
    await asyncio.sleep(6)  # what a replay would have added has long arrived by now
    assert await _state(stack, tenant) == settled
    assert len(await dead_letters(stack)) == letters
