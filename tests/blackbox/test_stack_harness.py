"""The harness itself: the seeded tenants answer with their keys, a customer's message reaches the chat API, a
killed process is really gone and comes back on restart, and a service can run as two instances, each killed
and restarted on its own."""

from __future__ import annotations

import shutil
import uuid
from functools import partial

import httpx
import pytest
from waflow_testing.fixtures import REPO, Infra, eventually
from waflow_testing.stack import CONSUMERS, SERVICES, Stack, StackTenant

pytestmark = pytest.mark.e2e


async def test_every_process_answers_and_each_tenant_sees_its_own_chat(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for name in SERVICES:
            for url in stack.urls(name):
                assert (await http.get(f"{url}/healthz")).status_code == 200, name
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


async def test_two_instances_each_answer_and_are_killed_and_restarted_one_at_a_time(infra: Infra) -> None:
    workdir = REPO / ".data" / "blackbox" / f"two-instances-{uuid.uuid4().hex[:6]}"
    async with (
        Stack(
            kafka_bootstrap=infra.kafka_bootstrap, mongodb_uri=infra.mongodb_uri, workdir=workdir, instances=2
        ) as stack,
        httpx.AsyncClient(timeout=5) as http,
    ):
        for name in CONSUMERS:
            first, second = stack.urls(name)
            assert first != second
            assert {stack.url(name), stack.url(name)} == {first, second}, "url() takes the instances in turn"
            for url in (first, second):
                assert (await http.get(f"{url}/healthz")).status_code == 200, url
        assert (stack.log_path("outbound", 1)).name == "outbound-2.log"

        stack.kill("conversation", 1)
        assert stack.running("conversation", 0)
        assert not stack.running("conversation", 1)
        assert (await http.get(f"{stack.url('conversation', 0)}/healthz")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{stack.url('conversation', 1)}/healthz")

        result = await stack.sim.customer_message(stack.tenant_a.phone_number_id, "15557000003", text="one left")
        assert result.delivered
        await stack.restart("conversation", 1)
        for url in stack.urls("conversation"):
            assert (await http.get(f"{url}/healthz")).status_code == 200
            shown = await eventually(partial(chat_ids_at, http, url, stack.tenant_a), what=f"the chat at {url}")
            assert "15557000003" in shown
    shutil.rmtree(workdir, ignore_errors=True)


async def chat_ids_at(http: httpx.AsyncClient, url: str, tenant: StackTenant) -> list[str] | None:
    answer = await http.get(f"{url}/v1/chats", headers=tenant.auth)
    return [c["wa_id"] for c in answer.json()["items"] if c["last_message"]] or None
