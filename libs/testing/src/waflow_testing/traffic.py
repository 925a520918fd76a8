"""Traffic for black-box tests: customers writing in through the simulator and agents answering through the
conversation API, what each of them should end up with, and the exact comparison with what the stack shows.
Also the Kafka-side probes those tests need: dead letters, consumer lag, a service with work in hand."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from waflow_common import topics
from waflow_simulator.models import SentMessage

from waflow_testing.stack import Stack, StackTenant

# What the simulator reports for a send once its whole status flow arrived (numbers are set to "read").
FINAL = "read"


@dataclass(frozen=True)
class Customer:
    tenant: StackTenant
    phone_number_id: str
    wa_id: str


@dataclass
class Traffic:
    """A run of customers writing in and agents answering, and what each of them should end up with."""

    stack: Stack
    http: httpx.AsyncClient
    customers: list[Customer]
    label: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    inbound: dict[str, list[str]] = field(default_factory=dict)  # wa_id -> texts the customer wrote
    outbound: dict[str, list[str]] = field(default_factory=dict)  # wa_id -> texts agents sent
    chat_ids: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # wa_ids whose contact an agent deleted (blacklisted)
    duplicate_share: float = 0.0  # of the customers' messages, the share Meta delivers twice
    server_errors: list[str] = field(default_factory=list)  # 5xx answers other than 503 (retry later)

    @classmethod
    def of(cls, stack: Stack, http: httpx.AsyncClient, count: int, first: int) -> Traffic:
        """`count` customers (Spanish mobile numbers from `first` on) spread over every business number."""
        numbers = [(t, n.phone_number_id) for t in stack.tenants for n in t.numbers]
        customers = [
            Customer(numbers[i % len(numbers)][0], numbers[i % len(numbers)][1], str(34_600_000_000 + first + i))
            for i in range(count)
        ]
        return cls(stack, http, customers)

    def by_wa_id(self) -> dict[str, Customer]:
        return {c.wa_id: c for c in self.customers}

    # --- making traffic ------------------------------------------------------------------------------------

    async def write_in(self, customer: Customer, text: str, *, timestamp: int | None = None) -> None:
        """The customer writes; the simulator delivers in the background and retries like Meta does (and
        delivers a `duplicate_share` of the messages twice)."""
        self.inbound.setdefault(customer.wa_id, []).append(text)
        duplicates = 1 if random.Random(text).random() < self.duplicate_share else 0
        # Our own wamid, so that a control call retried after a dropped connection is the same message (then
        # delivered twice, as Meta's duplicates are, which the stack must absorb).
        wamid = wamid_for(customer.wa_id)
        for attempt in range(20):
            try:
                await self.stack.sim.customer_message(
                    customer.phone_number_id,
                    customer.wa_id,
                    text=text,
                    name=f"Customer {customer.wa_id}",
                    wamid=wamid,
                    wait=False,
                    duplicates=duplicates,
                    timestamp=timestamp,
                )
                return
            except httpx.TransportError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)

    async def open_chats(self, *, greet: bool = True) -> None:
        """Each customer writes first (opening the 24-hour window; `greet=False`: they wrote already); returns
        once every chat shows."""
        for customer in self.customers if greet else ():
            await self.write_in(customer, f"{self.label} hello from {customer.wa_id}")
        wanted = {c.wa_id for c in self.customers}

        async def all_chats() -> bool:
            for tenant in self.stack.tenants:
                for chat in await self.chats(tenant):
                    if chat["wa_id"] in wanted and chat["last_message"]:
                        self.chat_ids[chat["wa_id"]] = chat["chat_id"]
            return wanted <= set(self.chat_ids)

        await until(all_chats, 180, "every customer's chat")

    async def send(self, customer: Customer, text: str) -> None:
        """An agent answers through the conversation API; a failed call is retried with the same key, as a
        client would (a retried POST with the same Idempotency-Key sends nothing more)."""
        self.outbound.setdefault(customer.wa_id, []).append(text)
        headers = customer.tenant.auth | {"Idempotency-Key": f"{self.label}-{text}"}
        while True:
            # Each try goes to the next instance: a killed one does not hold the agent up.
            url = f"{self.stack.url('conversation')}/v1/chats/{self.chat_ids[customer.wa_id]}/messages"
            try:
                answer = await self.http.post(url, json={"type": "text", "body": text}, headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if answer.status_code < 500:
                assert answer.status_code == 202, answer.text
                return
            if answer.status_code != 503:
                self.server_errors.append(f"{answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(0.2)

    async def stream(
        self,
        inbound: int,
        outbound: int,
        fault: Callable[[], Coroutine[Any, Any, None]] | None = None,
        at: float = 0.4,
        *,
        answer: Sequence[Customer] | None = None,
        workers: int = 8,
    ) -> None:
        """`inbound` customer messages and `outbound` agent sends (to `answer`, by default every customer),
        interleaved at random; `fault` runs once when `at` of them have been issued, while the stream goes on."""
        rng = random.Random(self.label)
        operations = [("in", i, rng.choice(self.customers)) for i in range(inbound)]
        operations += [("out", i, rng.choice(answer or self.customers)) for i in range(outbound)]
        rng.shuffle(operations)
        fault_at = int(len(operations) * at)
        fault_task: asyncio.Task[None] | None = None
        queue: asyncio.Queue[tuple[str, int, Customer]] = asyncio.Queue()
        for operation in operations:
            queue.put_nowait(operation)
        issued = 0

        async def worker() -> None:
            nonlocal issued, fault_task
            while not queue.empty():
                direction, i, customer = queue.get_nowait()
                issued += 1
                if fault is not None and fault_task is None and issued >= fault_at:
                    fault_task = asyncio.create_task(fault())
                if direction == "in":
                    await self.write_in(customer, f"{self.label} in {i} from {customer.wa_id}")
                else:
                    await self.send(customer, f"{self.label} out {i} to {customer.wa_id}")

        await asyncio.gather(*(worker() for _ in range(workers)))
        if fault_task is not None:
            await fault_task

    # --- reading the end state -----------------------------------------------------------------------------

    async def chats(self, tenant: StackTenant) -> list[dict[str, Any]]:
        return await self.pages(f"{self.stack.url('conversation')}/v1/chats", tenant)

    async def pages(self, url: str, tenant: StackTenant) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = await self.get(url, params, tenant)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    async def get(self, url: str, params: dict[str, Any], tenant: StackTenant) -> Any:
        """A read, retried as any client would while the server restarts (or drops a kept-alive connection)."""
        for _ in range(100):
            try:
                answer = await self.http.get(url, params=params, headers=tenant.auth)
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if answer.status_code != 503:
                answer.raise_for_status()
                return answer.json()
            await asyncio.sleep(0.2)
        raise AssertionError(f"GET {url} kept failing")

    async def problems(self, *, unknown_outcomes: bool = False) -> list[str]:
        """Every difference between what the stack shows and what was sent; empty when the end state is exact.

        `unknown_outcomes`: a send whose process was killed during its call to WhatsApp is reported failed with
        `outcome_unknown` (outbound never calls twice: Meta's /messages has no idempotency key); such a send may
        have reached WhatsApp once or not at all."""
        found: list[str] = []
        ours = self.by_wa_id()
        for tenant in self.stack.tenants:
            shown = Counter(c["wa_id"] for c in await self.chats(tenant) if c["wa_id"] in ours)
            contacts = await self.pages(f"{self.stack.url('contacts')}/v1/contacts", tenant)
            known = Counter(c["wa_id"] for c in contacts if c["wa_id"] in ours)
            for customer in (c for c in self.customers if c.tenant == tenant):
                if shown[customer.wa_id] != 1:
                    found.append(f"{customer.wa_id}: {shown[customer.wa_id]} chats")
                listed = 0 if customer.wa_id in self.deleted else 1  # a deleted contact leaves the listing
                if known[customer.wa_id] != listed:
                    found.append(f"{customer.wa_id}: {known[customer.wa_id]} contacts listed, not {listed}")
        sent_at_whatsapp = Counter(
            (m.to, m.body["text"]["body"])
            for m in await self.stack.sim.sent()
            if m.type == "text" and m.error_code is None and isinstance(m.body, dict)
        )
        for (to, text), times in sent_at_whatsapp.items():
            if to in ours and text not in self.outbound.get(to, []):
                found.append(f"{to}: {text!r} reached WhatsApp {times}x but no agent sent it")
        timelines = await asyncio.gather(*(self.timeline(c) for c in self.customers))
        for customer, timeline in zip(self.customers, timelines, strict=True):
            wa_id = customer.wa_id
            written = Counter(m["content"].get("body") for m in timeline if m["direction"] == "in")
            if written != Counter(self.inbound.get(wa_id, [])):
                found.append(f"{wa_id}: timeline in {diff(written, Counter(self.inbound.get(wa_id, [])))}")
            answered = [m for m in timeline if m["direction"] == "out"]
            texts = Counter(m["content"].get("body") for m in answered)
            if texts != Counter(self.outbound.get(wa_id, [])):
                found.append(f"{wa_id}: timeline out {diff(texts, Counter(self.outbound.get(wa_id, [])))}")
            for message in answered:
                text = message["content"].get("body")
                at_whatsapp = sent_at_whatsapp[(wa_id, text)]
                unknown = (message.get("failure") or {}).get("reason") == "outcome_unknown"
                if unknown and unknown_outcomes and at_whatsapp <= 1:
                    continue
                if at_whatsapp != 1 or message["status"] != FINAL:
                    reason = (message.get("failure") or {}).get("reason")
                    found.append(f"{wa_id}: {text!r} sent {at_whatsapp}x, status {message['status']} ({reason})")
        return found

    async def timeline(self, customer: Customer) -> list[dict[str, Any]]:
        url = f"{self.stack.url('conversation')}/v1/chats/{self.chat_ids[customer.wa_id]}/messages"
        return [m for m in await self.pages(url, customer.tenant) if m["kind"] == "message"]

    async def settle(self, timeout: float, *, unknown_outcomes: bool = False) -> None:
        """Waits for the exact end state, then checks it once more a little later: a duplicate applied late
        (a redelivered webhook, a replayed record) would show up then."""
        assert await self.stack.sim.drain(timeout), "the simulator still has webhook deliveries in flight"
        failed = [d for d in await self.stack.sim.deliveries() if not d.delivered]
        assert not failed, f"webhooks the simulator gave up on: {failed[:5]}"
        last: list[str] = []

        async def exact() -> bool:
            nonlocal last
            last = await self.problems(unknown_outcomes=unknown_outcomes)
            return not last

        await until(exact, timeout, "the exact end state", lambda: last[:20])
        assert not self.server_errors, f"answers other than 202 or 503 (retry): {self.server_errors[:5]}"
        await asyncio.sleep(3)
        again = await self.problems(unknown_outcomes=unknown_outcomes)
        assert not again, again[:20]


def diff(shown: Counter[Any], expected: Counter[Any]) -> str:
    missing, extra = expected - shown, shown - expected
    return f"missing {sorted(missing.elements())[:3]} ({missing.total()}), extra {sorted(extra.elements())[:3]}"


async def until(
    probe: Callable[[], Awaitable[bool]], timeout: float, what: str, last: Callable[[], Any] | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {last() if last else None}")
        await asyncio.sleep(1.0)


def wamid_for(wa_id: str) -> str:
    """A new message id shaped like Meta's."""
    return "wamid." + base64.b64encode(f"{wa_id}:{uuid.uuid4().hex}".encode()).decode()


async def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    """Every record on the stack's dead-letter topics, read from the beginning to their current end."""
    return await records(stack, [topics.dlq(t) for t in topics.CONSUMED])


async def records(stack: Stack, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every record (JSON) on the stack's topics `names`, read from the beginning to their current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [
            TopicPartition(name, p)
            for name in (stack.settings.topic(t) for t in names)
            for p in cluster.partitions_for_topic(name) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[dict[str, Any]] = []
        while True:
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not behind:
                return found
            for batch in (await consumer.getmany(*behind, timeout_ms=500)).values():
                found += [json.loads(r.value) for r in batch]
    finally:
        await consumer.stop()


def busiest_second(calls: Iterable[SentMessage | float]) -> int:
    """The most calls WhatsApp received in any one second (a sliding window over their receive times)."""
    times = sorted(c if isinstance(c, float) else c.received_at for c in calls)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def backlog(stack: Stack) -> dict[str, int]:
    """Records each of the stack's consumer groups has yet to commit, by group (Kafka's view of their lag)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        prefix = stack.settings.group("")
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix)]
        lag: dict[str, int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(list(committed))
            lag[group.removeprefix(prefix)] = sum(ends[tp] - max(0, o.offset) for tp, o in committed.items())
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def busy(stack: Stack, service: str, timeout: float = 10.0) -> None:
    """Waits (a little) until the service has records to work through, so that the kill lands mid-work; the
    groups of a service are named after it (they are visible in Kafka and on its dead letters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        lag = await backlog(stack)
        if any(n for group, n in lag.items() if group == service or service in group.split("-")[:2]):
            return
        await asyncio.sleep(0.05)
