"""The harness itself: the seeded tenants answer with their keys, a customer's message reaches the chat API, and
a killed process is really gone and comes back on restart."""

from __future__ import annotations

from functools import partial

import httpx
import pytest
from waflow_testing.fixtures import eventually
from waflow_testing.stack import SERVICES, Stack, StackTenant

pytestmark = pytest.mark.e2e


async def test_every_process_answers_and_each_tenant_sees_its_own_chat(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for name in SERVICES:
            assert (await http.get(f"{stack.url(name)}/healthz")).status_code == 200, name
        for tenant, wa_id in ((stack.tenant_a, "15557000001"), (stack.tenant_b, "15557000002")):
            result = await stack.sim.customer_message(tenant.phone_number_id, wa_id, text=f"hi {tenant.tenant_id}")
            assert result.delivered

        for tenant, wa_id in ((stack.tenant_a, "15557000001"), (stack.tenant_b, "15557000002")):
            shown: list[str] = await eventually(partial(chat_ids, http, stack, tenant), what="the chat")
            assert shown == [wa_id]


async def chat_ids(http: httpx.AsyncClient, stack: Stack, tenant: StackTenant) -> list[str] | None:
    answer = await http.get(f"{stack.url('conversation')}/v1/chats", headers=tenant.auth)
    return [c["wa_id"] for c in answer.json()["items"] if c["last_message"]] or None


async def test_a_killed_process_is_gone_until_restarted(stack: Stack) -> None:
    stack.kill("contacts")
    assert not stack.running("contacts")
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{stack.url('contacts')}/healthz")
        await stack.restart("contacts")
        assert (await http.get(f"{stack.url('contacts')}/healthz")).status_code == 200
