"""The example subscriber of docs/subscribers.md, run as another system would run it (its own process, its own
consumer group): it receives a chat's events, each once and in the customer's order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import httpx
from waflow_testing.fixtures import REPO
from waflow_testing.stack import Stack

EXAMPLE = REPO / "examples" / "chat_subscriber.py"


async def test_the_example_subscriber_receives_a_chats_events_once_and_in_order(stack: Stack) -> None:
    tenant = stack.tenant_a
    wa_id = "393401234567"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--bootstrap",
        stack.settings.kafka_bootstrap_servers,
        "--prefix",
        stack.settings.waflow_topic_prefix,
        "--group",
        "crm-sync-test",
        "--tenant",
        tenant.tenant_id,
        stdout=asyncio.subprocess.PIPE,
    )
    lines: list[dict[str, Any]] = []
    try:
        texts = [f"message {i} of the chat" for i in range(5)]
        for text in texts:
            await stack.sim.customer_message(tenant.phone_number_id, wa_id, text=text, name="Giulia")
        async with httpx.AsyncClient(base_url=stack.url("conversation"), headers=tenant.auth, timeout=10) as api:
            chat_id = await _chat_of(api, wa_id)
            assert (await api.post(f"/v1/chats/{chat_id}/read")).status_code in (200, 204)

        def received() -> list[str]:
            return [
                line["text"] for line in lines if line["event_type"] == "message.received" and line["wa_id"] == wa_id
            ]

        async def read_until_done() -> None:
            assert process.stdout is not None
            while not (
                len(received()) >= len(texts)
                and any(line["event_type"] == "chat.read" and line["wa_id"] == wa_id for line in lines)
            ):
                raw = await process.stdout.readline()
                assert raw, "the example subscriber stopped"
                lines.append(json.loads(raw))

        await asyncio.wait_for(read_until_done(), timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()

    assert received() == texts  # in the order the customer wrote, each once
    ours = [line for line in lines if line["wa_id"] == wa_id]
    assert len({line["event_id"] for line in ours}) == len(ours)
    assert all(line["tenant_id"] == tenant.tenant_id for line in lines)
    assert {line["key"] for line in ours} == {f"{tenant.tenant_id}:{wa_id}"}  # one key: one partition, in order
    assert [line["event_type"] for line in ours].count("window.opened") == 1  # the first message opened it


async def _chat_of(api: httpx.AsyncClient, wa_id: str) -> str:
    for _ in range(300):
        page = (await api.get("/v1/chats", params={"limit": 200})).json()
        for chat in page["items"]:
            if chat["wa_id"] == wa_id and chat.get("unread_count", 0) >= 5:
                return str(chat["chat_id"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no chat of {wa_id} with its five messages")
