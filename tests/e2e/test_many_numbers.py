"""A tenant with two business numbers under two WABAs, end to end on real Kafka and the database server, the WhatsApp
simulator over HTTP: a customer who writes to both numbers has one chat per number, an agent's reply leaves from
its chat's number, each number keeps its own pace, a backlog on one never holding up the other, and a deleted
contact gets nothing from either number, read receipts included.

Pacing is checked the only way a test may: as counts of calls per one-second window of the simulator's own
receive times (a rate), never as how long anything took.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from waflow_common.admin import Admin, TenantFile
from waflow_common.events.outbound import SendRequested, SendRequestedEvent, TemplateMessage
from waflow_common.events.tenants import PhoneNumber
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_contacts.main import ContactsSettings
from waflow_contacts.main import create_app as create_contacts
from waflow_conversation.main import ConversationSettings
from waflow_conversation.main import create_app as create_conversation
from waflow_ingest.main import IngestSettings
from waflow_ingest.main import create_app as create_ingest
from waflow_simulator.client import SimulatorClient
from waflow_simulator.models import SentMessage
from waflow_testing.fixtures import (
    TENANT_A,
    eventually,
    free_port,
    isolated_env,
    put_test_app,
    serve,
    settings_for,
)
from waflow_testing.traffic import busiest_second

pytestmark = pytest.mark.e2e

WAIT = 30.0


@dataclass(frozen=True)
class Number:
    phone_number_id: str
    waba_id: str
    display_phone_number: str
    rate_per_second: int


# Number A is slow, number B four times faster; each under a WABA of its own, both on one Meta app.
NUMBER_A = Number("118273645511111", "104882910311111", "15550001111", 5)
NUMBER_B = Number("118273645522222", "104882910322222", "15550002222", 20)
TENANT_ID = "tenant-many"
API_KEY = "wf_test_key_many"
ACCESS_TOKEN = "access-token-tenant-many"


@dataclass
class Stack:
    sim: SimulatorClient
    chats: httpx.AsyncClient
    contacts: httpx.AsyncClient
    outbound: httpx.AsyncClient
    publisher: EventPublisher


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(settings_env: dict[str, str]) -> AsyncIterator[Stack]:
    env = isolated_env(settings_env, "numbers")
    settings = settings_for(ConversationSettings, env)
    await ensure_topics(settings)
    async with Admin(settings) as admin:
        await put_test_app(admin)
        await admin.put_tenant(
            TenantFile(
                tenant_id=TENANT_ID,
                name="a business with two numbers",
                app_id=TENANT_A.app_id,
                phone_numbers=[
                    PhoneNumber(
                        phone_number_id=n.phone_number_id,
                        waba_id=n.waba_id,
                        display_phone_number=n.display_phone_number,
                        rate_per_second=n.rate_per_second,
                    )
                    for n in (NUMBER_A, NUMBER_B)
                ],
                access_token=ACCESS_TOKEN,
                api_keys=[API_KEY],
            )
        )
    broker = make_broker(settings, client_id="many-numbers-test")
    await broker.start()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    ports = {"simulator": free_port(), "outbound": free_port()}
    sim_url, outbound_url = (f"http://127.0.0.1:{ports[name]}" for name in ("simulator", "outbound"))
    # WhatsApp and outbound run as processes of their own: the pace is measured where WhatsApp receives the
    # calls, and an event loop shared with the other services (and the test) would add its own jitter.
    simulator_env = {
        "SIMULATOR_PORT": str(ports["simulator"]),
        "SIMULATOR_RETRY_BASE_SECONDS": "0.05",
        "SIMULATOR_RETRY_MAX_ATTEMPTS": "5",
    }
    outbound_env = env | {"WHATSAPP_API_BASE_URL": sim_url, "OUTBOUND_PORT": str(ports["outbound"])}
    try:
        with process(["-c", "from waflow_simulator.main import run; run()"], simulator_env):
            await wait_healthy(sim_url)
            async with (
                serve(create_ingest(settings_for(IngestSettings, env))) as ingest_url,
                serve(create_conversation(settings)) as conversation_url,
                serve(create_contacts(settings_for(ContactsSettings, env))) as contacts_url,
                SimulatorClient(sim_url) as sim,
            ):
                await sim.put_app(
                    TENANT_A.app_id,
                    app_secret=TENANT_A.app_secret,
                    webhook_url=f"{ingest_url}/webhooks/whatsapp/{TENANT_A.app_id}",
                )
                for n in (NUMBER_A, NUMBER_B):
                    # WhatsApp itself would allow far more: what is measured is outbound's own pace per number.
                    await sim.put_number(
                        n.phone_number_id,
                        display_phone_number=n.display_phone_number,
                        waba_id=n.waba_id,
                        app_id=TENANT_A.app_id,
                        access_token=ACCESS_TOKEN,
                        rate_per_second=1000,
                        status_flow="none",
                    )
                with process(["-m", "waflow_outbound.main"], outbound_env):
                    await wait_healthy(outbound_url)
                    async with (
                        httpx.AsyncClient(base_url=conversation_url, headers=auth, timeout=30) as chats,
                        httpx.AsyncClient(base_url=outbound_url, headers=auth, timeout=30) as outbound,
                        httpx.AsyncClient(base_url=contacts_url, headers=auth, timeout=30) as contacts,
                    ):

                        async def both_wabas_synced() -> bool:
                            templates = (await outbound.get("/v1/templates", params={"q": "open_template"})).json()
                            found = {t["waba_id"] for t in templates["templates"] if t["status"] == "APPROVED"}
                            return found == {NUMBER_A.waba_id, NUMBER_B.waba_id}

                        await eventually(both_wabas_synced, timeout=WAIT, what="the templates of both WABAs")
                        yield Stack(sim, chats, contacts, outbound, EventPublisher(broker, settings))
    finally:
        await broker.stop()


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, *args], env=os.environ | env)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)


async def wait_healthy(url: str) -> None:
    async def healthy() -> bool:
        async with httpx.AsyncClient(timeout=2) as http:
            try:
                return (await http.get(f"{url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

    # A process starting on a busy machine (imports, Kafka group joins, template sync) can take a while.
    await eventually(healthy, timeout=120, what=f"{url} to answer")


def new_wa_id() -> str:
    return "1555" + str(uuid.uuid4().int)[:8]


async def chats_of(stack: Stack, wa_id: str) -> dict[str, dict[str, Any]]:
    items = (await stack.chats.get("/v1/chats", params={"search": wa_id})).json()["items"]
    return {c["phone_number_id"]: c for c in items if c["wa_id"] == wa_id and c["last_message"]}


async def write_to_both(stack: Stack, wa_id: str) -> dict[str, dict[str, Any]]:
    """The customer writes to each number; returns their chats by phone_number_id once both are shown."""
    await stack.sim.customer_message(NUMBER_A.phone_number_id, wa_id, text="to the shop", name="Ana")
    await stack.sim.customer_message(NUMBER_B.phone_number_id, wa_id, text="to the support line", name="Ana")

    async def two_chats() -> dict[str, dict[str, Any]] | None:
        found = await chats_of(stack, wa_id)
        return found if len(found) == 2 else None

    return await eventually(two_chats, timeout=WAIT, what="a chat per number")


async def test_a_customer_writing_to_both_numbers_has_a_chat_per_number_and_replies_leave_from_its_number(
    stack: Stack,
) -> None:
    wa_id = new_wa_id()
    chats = await write_to_both(stack, wa_id)
    assert set(chats) == {NUMBER_A.phone_number_id, NUMBER_B.phone_number_id}
    assert len({c["chat_id"] for c in chats.values()}) == 2
    for number, text in ((NUMBER_A, "to the shop"), (NUMBER_B, "to the support line")):
        messages = (await stack.chats.get(f"/v1/chats/{chats[number.phone_number_id]['chat_id']}/messages")).json()
        assert [m["content"]["body"] for m in messages["items"]] == [text]

    for number, reply in ((NUMBER_B, "support here"), (NUMBER_A, "shop here")):
        answer = await stack.chats.post(
            f"/v1/chats/{chats[number.phone_number_id]['chat_id']}/messages", json={"type": "text", "body": reply}
        )
        assert answer.status_code == 202, answer.text

    async def texts_sent() -> dict[str, list[str]] | None:
        sent = {
            n.phone_number_id: [
                s.body["text"]["body"] for s in await stack.sim.sent(n.phone_number_id, to=wa_id, type="text")
            ]
            for n in (NUMBER_A, NUMBER_B)
        }
        return sent if sum(len(v) for v in sent.values()) >= 2 else None

    sent = await eventually(texts_sent, timeout=WAIT, what="both replies at WhatsApp")
    assert sent == {NUMBER_A.phone_number_id: ["shop here"], NUMBER_B.phone_number_id: ["support here"]}


def template_to(number: Number, wa_id: str) -> SendRequestedEvent:
    return SendRequestedEvent.new(
        tenant_id=TENANT_ID,
        payload=SendRequested(
            request_id=f"req_{uuid.uuid4().hex[:12]}",
            phone_number_id=number.phone_number_id,
            wa_id=wa_id,
            message=TemplateMessage(name="open_template", language="en", parameters={"SENTENCE": "see you"}),
            requested_by="agent:test",
        ),
    )


async def test_each_number_keeps_its_own_pace_and_a_backlog_on_one_does_not_hold_up_the_other(stack: Stack) -> None:
    # A backlog of five seconds' worth on the slow number, then two seconds' worth on the fast one; each to
    # customers of their own, so only the numbers' pace (not Meta's pair rate per customer) applies.
    backlog_a = [template_to(NUMBER_A, new_wa_id()) for _ in range(NUMBER_A.rate_per_second * 5)]
    backlog_b = [template_to(NUMBER_B, new_wa_id()) for _ in range(NUMBER_B.rate_per_second * 2)]
    await stack.publisher.publish_many(backlog_a)
    await stack.publisher.publish_many(backlog_b)

    async def all_sent() -> dict[Number, list[SentMessage]] | None:
        sent = {}
        for number, backlog in ((NUMBER_A, backlog_a), (NUMBER_B, backlog_b)):
            wanted = {c.payload.wa_id for c in backlog}
            calls = await stack.sim.sent(number.phone_number_id, type="template")
            sent[number] = [c for c in calls if c.to in wanted and c.wamid is not None]
        done = len(sent[NUMBER_A]) == len(backlog_a) and len(sent[NUMBER_B]) == len(backlog_b)
        return sent if done else None

    sent = await eventually(all_sent, timeout=60, what="both backlogs at WhatsApp")

    # Each number stays within its own rate. Slack of half the rate: outbound caps when calls start, the count
    # is of when they land, and on a busy machine a stalled process lands a few together. Without a pace of
    # its own a number would land its whole backlog (five times its rate, for A) within about a second.
    for number in (NUMBER_A, NUMBER_B):
        allowed = math.ceil(number.rate_per_second * 1.5)
        assert busiest_second(sent[number]) <= allowed, (number, busiest_second(sent[number]))
    # The fast number ran at its own pace, not the slow one's...
    assert busiest_second(sent[NUMBER_B]) >= NUMBER_B.rate_per_second // 2
    # ...and while the slow number still had its backlog: it was queued first, yet finished last.
    last_b = max(c.received_at for c in sent[NUMBER_B])
    a_before_b_finished = sum(1 for c in sent[NUMBER_A] if c.received_at <= last_b)
    assert a_before_b_finished < len(backlog_a)


async def read_receipts(stack: Stack) -> dict[str, float]:
    """Read receipts outbound has finished so far, by outcome (its own metric): "accepted" or why not."""
    text = (await stack.outbound.get("/metrics")).text
    pattern = r'^waflow_outbound_read_receipts_total\{outcome="([a-z_]+)"\} (\S+)$'
    return {outcome: float(value) for outcome, value in re.findall(pattern, text, re.MULTILINE)}


async def test_a_deleted_contact_gets_nothing_from_either_number_not_even_a_read_receipt(stack: Stack) -> None:
    wa_id = new_wa_id()
    chats = await write_to_both(stack, wa_id)
    contact = await eventually(
        lambda: _found(stack.contacts.get(f"/v1/contacts/by-phone/{wa_id}")), timeout=WAIT, what="the contact"
    )
    deleted = await stack.contacts.delete(f"/v1/contacts/{contact['contact_id']}", headers={"X-Actor": "agent:test"})
    assert deleted.status_code == 200, deleted.text

    async def both_chats_blacklisted() -> bool:
        found = await chats_of(stack, wa_id)
        return len(found) == 2 and all(c["blacklisted"] is True for c in found.values())

    await eventually(both_chats_blacklisted, timeout=WAIT, what="both chats showing the blacklist")
    for chat in chats.values():
        answer = await stack.chats.post(f"/v1/chats/{chat['chat_id']}/messages", json={"type": "text", "body": "hi"})
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "blacklisted"

    # Outbound learns the blacklist from contacts.v1 and the read from conversation.v1: two topics, each
    # followed on its own. The rule under test is what outbound does once it knows, so wait for that.
    async def outbound_knows() -> bool:
        for number in (NUMBER_A, NUMBER_B):
            state = (await stack.outbound.get(f"/v1/recipients/{number.phone_number_id}/{wa_id}")).json()
            if state["blacklisted"] is not True:
                return False
        return True

    await eventually(outbound_knows, timeout=WAIT, what="outbound's blacklist")
    before = await read_receipts(stack)
    for chat in chats.values():
        read = await stack.chats.post(f"/v1/chats/{chat['chat_id']}/read", json={"by": "agent:test"})
        assert read.status_code == 200, read.text

    async def both_reads_finished() -> dict[str, float] | None:
        now = await read_receipts(stack)
        grown = {k: v - before.get(k, 0.0) for k, v in now.items() if v > before.get(k, 0.0)}
        return grown if sum(grown.values()) >= 2 else None

    finished = await eventually(both_reads_finished, timeout=WAIT, what="both read receipts finished")
    for number in (NUMBER_A, NUMBER_B):
        assert [(s.type, s.body) for s in await stack.sim.sent(number.phone_number_id, to=wa_id)] == []
    assert finished == {"blacklisted": 2}


async def _found(request: Awaitable[httpx.Response]) -> dict[str, Any] | None:
    response = await request
    return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]
