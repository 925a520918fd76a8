"""Scale-out, end to end: two instances each of ingest, conversation, contacts and outbound, separate OS processes
on the run's Kafka and database server. Customers write in through the simulator (a share of the webhooks
delivered twice, statuses in shuffled order) while agents answer, read chats, add notes and tags and delete
contacts through both instances of each API; instance 2 of every service is SIGKILLed mid-stream and restarted.

The end state must be exactly what the input implies: every message once in its chat, every reply once at
WhatsApp and read, unread counts, every note and tag once, nothing to a deleted contact, each window event
announced once, no number above its rate in any second, nothing dead-lettered.

The short form runs in `make test`; `make soak` (WAFLOW_SOAK=1) runs 5,000 messages from 200 customers.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_testing.fixtures import REPO, Infra
from waflow_testing.stack import CONSUMERS, Stack
from waflow_testing.traffic import Customer, Traffic, busiest_second, busy, dead_letters, diff, records, until

pytestmark = pytest.mark.e2e

SOAK = os.environ.get("WAFLOW_SOAK") == "1"


@dataclass(frozen=True)
class Size:
    messages: int
    customers: int
    deletes: int
    expiring: int  # customers whose only message is almost 24 hours old: their window closes during the run


SHORT = Size(messages=360, customers=30, deletes=3, expiring=3)
LONG = Size(messages=5_000, customers=200, deletes=10, expiring=5)
SCALED = ("ingest", *CONSUMERS)
TAGS = ("vip", "returning", "wholesale", "complaint")


@pytest_asyncio.fixture(loop_scope="session")
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    workdir = REPO / ".data" / "blackbox" / f"scale-out-{uuid.uuid4().hex[:6]}"
    env = {"CONVERSATION_SWEEP_SECONDS": "2"}  # window events within the run
    async with Stack(
        kafka_bootstrap=infra.kafka_bootstrap,
        mongodb_uri=infra.mongodb_uri,
        workdir=workdir,
        instances=dict.fromkeys(SCALED, 2),
        env=env,
        label="so",
    ) as stack:
        await stack.numbers_behave(shuffle_statuses=True)
        yield stack
    shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Agents:
    """What agents do beside the replies, through every instance in turn, and what it must leave behind."""

    traffic: Traffic
    rng: random.Random
    contact_ids: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # wa_id -> note texts
    tags: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # wa_id -> tags added

    @property
    def stack(self) -> Stack:
        return self.traffic.stack

    @property
    def http(self) -> httpx.AsyncClient:
        return self.traffic.http

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        customer: Customer,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One agent request, retried (on the next instance) while an instance is down or busy. Only idempotent
        requests come here: a request cut off mid-way may have been applied."""
        for _ in range(300):
            try:
                answer = await self.http.request(
                    method,
                    self.stack.url(service) + path,
                    headers=customer.tenant.auth | (headers or {}),
                    **kwargs,
                )
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if answer.status_code not in (409, 503):  # 409: a concurrent change won; the agent tries again
                return answer
            await asyncio.sleep(0.1)
        raise AssertionError(f"{method} {path} kept failing")

    async def find_contacts(self) -> None:
        for customer in self.traffic.customers:

            async def known(customer: Customer = customer) -> bool:
                answer = await self.call("contacts", "GET", f"/v1/contacts/by-phone/{customer.wa_id}", customer)
                if answer.status_code == 200:
                    self.contact_ids[customer.wa_id] = answer.json()["contact_id"]
                return answer.status_code == 200

            await until(known, 60, f"the contact of {customer.wa_id}")

    async def add_note(self, customer: Customer, text: str) -> None:
        """Notes have no idempotency key: a POST cut off after it was sent is looked for before it is repeated."""
        chat_id = self.traffic.chat_ids[customer.wa_id]
        self.notes[customer.wa_id].append(text)
        body = {"author": "agent:scale", "text": text}
        while True:
            try:
                answer = await self.http.post(
                    f"{self.stack.url('conversation')}/v1/chats/{chat_id}/notes",
                    json=body,
                    headers=customer.tenant.auth,
                )
            except httpx.ConnectError:  # never reached the instance
                await asyncio.sleep(0.2)
                continue
            except httpx.TransportError:
                await asyncio.sleep(0.5)
                if text in await self.note_texts(customer):
                    return
                continue
            if answer.status_code == 503:
                await asyncio.sleep(0.2)
                continue
            assert answer.status_code == 201, answer.text
            return

    async def note_texts(self, customer: Customer) -> list[str]:
        url = f"{self.stack.url('conversation')}/v1/chats/{self.traffic.chat_ids[customer.wa_id]}/notes"
        return [n["text"] for n in await self.traffic.pages(url, customer.tenant)]

    async def tag(self, customer: Customer, tag: str) -> None:
        self.tags[customer.wa_id].add(tag)
        path = f"/v1/contacts/{self.contact_ids[customer.wa_id]}/tags"
        answer = await self.call("contacts", "POST", path, customer, json={"tags": [tag]})
        assert answer.status_code == 200, answer.text

    async def read(self, customer: Customer) -> None:
        path = f"/v1/chats/{self.traffic.chat_ids[customer.wa_id]}/read"
        answer = await self.call("conversation", "POST", path, customer, json={"by": "agent:scale"})
        assert answer.status_code == 200, answer.text

    async def delete(self, customer: Customer) -> None:
        self.traffic.deleted.add(customer.wa_id)
        path = f"/v1/contacts/{self.contact_ids[customer.wa_id]}"
        answer = await self.call("contacts", "DELETE", path, customer, headers={"X-Actor": "agent:scale"})
        assert answer.status_code == 200, answer.text

    async def work(self, actions: list[Callable[[], Awaitable[None]]], workers: int = 4) -> None:
        queue = list(actions)
        self.rng.shuffle(queue)

        async def worker() -> None:
            while queue:
                await queue.pop()()
                await asyncio.sleep(self.rng.random() * 0.05)

        await asyncio.gather(*(worker() for _ in range(workers)))


async def kill_instance_two_of_each(stack: Stack) -> None:
    await busy(stack, "conversation")
    for service in SCALED:
        stack.kill(service, 1)
    await asyncio.sleep(2)
    for service in SCALED:
        await stack.restart(service, 1)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(SHORT, id="short"),
        pytest.param(
            LONG, id="long", marks=[pytest.mark.soak, pytest.mark.skipif(not SOAK, reason="long form: make soak")]
        ),
    ],
)
async def test_two_instances_of_each_service_killed_mid_stream_end_exactly_where_the_input_says(
    stack: Stack, size: Size
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        await run_scale_out(stack, http, size)


async def run_scale_out(stack: Stack, http: httpx.AsyncClient, size: Size) -> None:
    rng = random.Random(size.messages)
    traffic = Traffic.of(stack, http, size.customers, 7_000_000 + size.messages)
    traffic.duplicate_share = 0.2
    expiring = Traffic.of(stack, http, size.expiring, 8_000_000 + size.messages)
    # Almost 24 hours ago: each of these windows opens, is announced closing at once and closes within a minute.
    closes_at = time.time() + 45
    for customer in expiring.customers:
        await expiring.write_in(customer, f"{expiring.label} long ago", timestamp=int(closes_at - 24 * 3600))
    await traffic.open_chats()
    await expiring.open_chats(greet=False)  # a greeting now would keep their windows open
    agents = Agents(traffic, rng)
    await agents.find_contacts()

    customers = list(traffic.customers)
    rng.shuffle(customers)
    deleted = customers[: size.deletes]
    unread = customers[size.deletes : size.deletes + len(customers) // 3]  # never read: every message unread
    read = customers[size.deletes + len(customers) // 3 :]  # read during the stream and at the end
    answered = [c for c in customers if c not in deleted]

    actions: list[Callable[[], Awaitable[None]]] = []
    for i in range(size.messages // 6):
        customer = rng.choice(customers)
        actions.append(partial(agents.add_note, customer, f"{traffic.label} note {i} on {customer.wa_id}"))
        actions.append(partial(agents.tag, rng.choice(answered), rng.choice(TAGS)))
        actions.append(partial(agents.read, rng.choice(read)))
    actions += [partial(agents.delete, customer) for customer in deleted]

    outbound = size.messages // 6
    inbound = size.messages - size.customers - outbound
    await asyncio.gather(
        traffic.stream(inbound, outbound, lambda: kill_instance_two_of_each(stack), at=0.4, answer=answered, workers=6),
        agents.work(actions),
    )
    for customer in read:
        await agents.read(customer)

    await traffic.settle(240 + size.messages / 20, unknown_outcomes=True)
    await expiring.settle(60)
    found: list[str] = []

    async def exact(probe: Callable[[], Awaitable[list[str]]]) -> bool:
        found[:] = await probe()
        return not found

    await until(
        lambda: exact(lambda: window_problems(stack, traffic, expiring)),
        120,
        "each window event once",
        lambda: found[:10],
    )
    await until(
        lambda: exact(lambda: agents_work_problems(agents, unread, read)), 60, "the agents' work", lambda: found[:10]
    )

    # A deleted contact is never messaged: a reply is refused, and WhatsApp got nothing for any of them.
    for customer in deleted:
        path = f"/v1/chats/{traffic.chat_ids[customer.wa_id]}/messages"
        for url in stack.urls("conversation"):
            answer = await http.post(url + path, json={"type": "text", "body": "no"}, headers=customer.tenant.auth)
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"]["code"] == "blacklisted", answer.text
    sent = await stack.sim.sent()
    assert [m for m in sent if m.to in {c.wa_id for c in deleted}] == []
    for tenant in stack.tenants:
        for number in tenant.numbers:
            calls = [m for m in sent if m.phone_number_id == number.phone_number_id]
            assert busiest_second(calls) <= number.rate_per_second, number
    assert await dead_letters(stack) == []


async def window_problems(stack: Stack, traffic: Traffic, expiring: Traffic) -> list[str]:
    """One window.opened per chat; one window.closing and one window.closed for each window that expired, and
    none for the others (counted by event id: a relay may publish an event twice, never two events)."""
    events: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in await records(stack, [topics.CONVERSATION]):
        if record["event_type"].startswith("window."):
            events[(record["payload"]["chat_id"], record["event_type"])].add(record["event_id"])
    wanted = {(chat_id, "window.opened"): 1 for chat_id in traffic.chat_ids.values()}
    for chat_id in expiring.chat_ids.values():
        wanted |= {(chat_id, kind): 1 for kind in ("window.opened", "window.closing", "window.closed")}
    ours = set(traffic.chat_ids.values()) | set(expiring.chat_ids.values())
    shown = {key: len(ids) for key, ids in events.items() if key[0] in ours}
    return [
        f"{key}: {shown.get(key, 0)} events, not {n}"
        for key, n in (wanted | shown).items()
        if shown.get(key, 0) != wanted.get(key, 0)
    ]


async def agents_work_problems(agents: Agents, unread: list[Customer], read: list[Customer]) -> list[str]:
    traffic = agents.traffic
    found: list[str] = []
    for customer in traffic.customers:
        wa_id = customer.wa_id
        notes = Counter(await agents.note_texts(customer))
        if notes != Counter(agents.notes.get(wa_id, [])):
            found.append(f"{wa_id}: notes {diff(notes, Counter(agents.notes.get(wa_id, [])))}")
        contact = (await agents.call("contacts", "GET", f"/v1/contacts/{agents.contact_ids[wa_id]}", customer)).json()
        if set(contact["tags"]) != agents.tags.get(wa_id, set()):
            found.append(f"{wa_id}: tags {sorted(contact['tags'])}, not {sorted(agents.tags.get(wa_id, set()))}")
        if contact["deleted"] != (wa_id in traffic.deleted):
            found.append(f"{wa_id}: deleted is {contact['deleted']}")
    counts: dict[str, int] = {}
    for tenant in traffic.stack.tenants:
        counts |= {c["wa_id"]: c["unread_count"] for c in await traffic.chats(tenant)}
    for customer in unread:
        if counts[customer.wa_id] != len(traffic.inbound[customer.wa_id]):
            found.append(
                f"{customer.wa_id}: {counts[customer.wa_id]} unread, not {len(traffic.inbound[customer.wa_id])}"
            )
    found += [f"{c.wa_id}: {counts[c.wa_id]} unread after the last read" for c in read if counts[c.wa_id]]
    return found
