"""The inbound pipeline as the conversation benchmarks drive it: the simulator, ingest and any number of
conversation processes; customers' messages sent through the simulator at a fixed rate (open loop); when each
becomes visible in the chat API; and, at the end, what the timelines show (lost, duplicated).

Open loop: message i is due at start + i/rate; its latency runs from when it was due (so a slow pipeline cannot
hide queueing) to when the chat API first shows it. Visibility is read from the chat list every poll interval
(from each conversation instance in turn): the benchmarks never mark chats read, so a chat's unread count is how
many of its messages are visible, and the k-th message sent to a customer counts as visible when a page showing
that chat's count at k or more first answers (the resolution is the poll interval plus a page read). The audit
reads every chat's timeline in full: lost = sent but absent, duplicated = shown more than once; and compares each
chat's unread count with its messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.infra import REPO, BenchTenant, free_port
from bench.loadgen import Connection, build_request

BIN = Path(sys.executable).parent


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def new_customers(count: int) -> list[str]:
    """`count` wa_ids no earlier run of this benchmark used (so each set starts with chats of its own)."""
    run = uuid.uuid4().int
    return [f"1555{(run + i) % 10**7:07d}" for i in range(count)]


def add_pipeline_arguments(parser: argparse.ArgumentParser, *, settle: float) -> None:
    """The options every benchmark of the pipeline has."""
    parser.add_argument("--concurrency", type=int, default=16, help="chats each instance applies at once")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections to the simulator")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="how often the chat list is read")
    parser.add_argument("--settle", type=float, default=settle, help="seconds after sending for stragglers")


# --- processes -------------------------------------------------------------------------------------------------
def start_simulator(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "waflow-simulator")],
        env=env | {"SIMULATOR_PORT": str(port), "SIMULATOR_WEBHOOK_MAX_CONNECTIONS": "64"},
    )


def start_ingest(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "waflow-ingest")], env=env | {"INGEST_PORT": str(port)})


def start_conversation(env: dict[str, str], port: int, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "waflow-conversation")],
        env=env | {"CONVERSATION_PORT": str(port), "CONVERSATION_CONSUMER_CONCURRENCY": str(concurrency)},
    )


def start_bare(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """bench/ingest/bare.py: a FastAPI endpoint that accepts the webhook POST and does nothing else."""
    command = [sys.executable, "-m", "uvicorn", "bench.ingest.bare:app", "--port", str(port)]
    return subprocess.Popen([*command, "--log-level", "warning", "--no-access-log"], env=env, cwd=REPO)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(15)


@dataclass
class Stack:
    """The ports of a running simulator and ingest, and of the conversation instances started so far."""

    simulator: int = field(default_factory=free_port)
    ingest: int = field(default_factory=free_port)
    conversation: list[int] = field(default_factory=list)

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.conversation]


async def register_number(http: httpx.AsyncClient, sim_port: int, tenant: BenchTenant, webhook_url: str) -> None:
    """Tells the simulator about the tenant's Meta app (whose webhooks go to `webhook_url`) and number."""
    sim = f"http://127.0.0.1:{sim_port}"
    app = {"app_secret": tenant.app_secret, "webhook_url": webhook_url}
    await http.put(f"{sim}/_sim/apps/{tenant.app_id}", json=app)
    number = {"display_phone_number": tenant.display_phone_number, "waba_id": tenant.waba_id}
    await http.put(
        f"{sim}/_sim/numbers/{tenant.phone_number_id}",
        json=number | {"app_id": tenant.app_id, "access_token": tenant.access_token},
    )


def ingest_url(stack: Stack, tenant: BenchTenant) -> str:
    return f"http://127.0.0.1:{stack.ingest}/webhooks/whatsapp/{tenant.app_id}"


async def consumed_events(http: httpx.AsyncClient, ports: list[int]) -> float:
    """Conversation's consumer counter, summed over the instances."""
    total = 0.0
    for port in ports:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        pattern = r"^waflow_conversation_events_total\{[^}]*\} ([0-9.e+]+)$"
        total += sum(float(m) for m in re.findall(pattern, text, re.M))
    return total


# --- load ------------------------------------------------------------------------------------------------------
@dataclass
class Load:
    customers: set[str] = field(default_factory=set)  # chats of other customers are not this load's
    due: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # wa_id -> due times, in order
    wamids: dict[str, str] = field(default_factory=dict)  # wamid -> wa_id
    failed_sends: int = 0
    send_ms: list[float] = field(default_factory=list)  # due -> the simulator's answer (webhook delivered)
    visible: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # wa_id -> k-th seen time
    chat_ids: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)  # warm-up messages per chat, not measured

    def expected(self) -> int:
        return sum(len(v) for v in self.due.values())

    def seen(self) -> int:
        return sum(len(v) for v in self.visible.values())

    def rebase(self) -> None:
        """What has been sent and seen so far is warm-up: measure only what comes next."""
        self.baseline = {wa_id: self.baseline.get(wa_id, 0) + len(seen) for wa_id, seen in self.visible.items()}
        self.visible.clear()
        self.due.clear()
        self.send_ms.clear()

    def latencies(self) -> list[float]:
        return [
            (shown - due) * 1000
            for wa_id, dues in self.due.items()
            for due, shown in zip(sorted(dues), self.visible.get(wa_id, []), strict=False)
        ]


def customer_message(sim_port: int, tenant: BenchTenant, wa_id: str, wamid: str, i: int) -> bytes:
    """The request that has the simulator deliver customer `wa_id`'s text message and answer once the webhook
    was accepted (`wait`)."""
    body = {
        "phone_number_id": tenant.phone_number_id,
        "from": wa_id,
        "name": f"Customer {wa_id[-4:]}",
        "type": "text",
        "content": {"body": f"message {i}"},
        "wamid": wamid,
        "wait": True,
    }
    return build_request("127.0.0.1", sim_port, "/_sim/customers/messages", json.dumps(body).encode(), {})


async def send_load(
    sim_port: int, tenant: BenchTenant, load: Load, customers: list[str], *, total: int, rate: float, connections: int
) -> None:
    """`total` customer messages through the simulator, message i due at start + i/rate, round robin over
    `customers`; each waits for the simulator's webhook delivery (`wait`)."""
    load.customers.update(customers)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection("127.0.0.1", sim_port))
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []

    async def send(i: int, due: float) -> None:
        wa_id = customers[i % len(customers)]
        wamid = f"wamid.BENCH{uuid.uuid4().hex}"
        load.due[wa_id].append(due)
        load.wamids[wamid] = wa_id
        raw = customer_message(sim_port, tenant, wa_id, wamid, i)
        connection = await pool.get()
        try:
            status = await connection.request(raw)
            if status != 200:
                load.failed_sends += 1
            else:
                load.send_ms.append((time.monotonic() - due) * 1000)
        except (ConnectionError, OSError):
            load.failed_sends += 1
            connection.close()
            connection = Connection("127.0.0.1", sim_port)
        finally:
            pool.put_nowait(connection)

    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, due)))
    await asyncio.gather(*tasks)
    for _ in range(connections):
        (await pool.get()).close()


async def poll_visibility(
    http: httpx.AsyncClient, bases: list[str], tenant: BenchTenant, load: Load, stop: asyncio.Event, interval: float
) -> None:
    """Reads the chat list every `interval` (from each base in turn) until `stop`, newest activity first, in pages
    a little larger than the load's customers, and stops paging once every one of them was seen in this round."""
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    rounds = 0
    while not stop.is_set():
        base = bases[rounds % len(bases)]
        rounds += 1
        began = time.monotonic()
        wanted = set(load.due)
        limit = min(200, len(wanted) + 20) if wanted else 200
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            page = (await http.get(f"{base}/v1/chats", headers=headers, params=params)).json()
            now = time.monotonic()  # when the page answered: a message counts as visible no sooner
            for chat in page["items"]:
                wa_id = chat["wa_id"]
                if wa_id not in load.customers:
                    continue
                wanted.discard(wa_id)
                load.chat_ids[wa_id] = chat["chat_id"]
                shown = load.visible[wa_id]
                while len(shown) < chat["unread_count"] - load.baseline.get(wa_id, 0):
                    shown.append(now)
            cursor = page["next_cursor"]
            if cursor is None or (load.due and not wanted):
                break
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))


@dataclass(frozen=True)
class Audit:
    unique: int  # messages of the load shown
    lost: int
    duplicated: int
    page_ms: list[float]  # each timeline page read
    miscounted: int  # over the chats: how far the unread count is from the messages its timeline shows


async def audit(http: httpx.AsyncClient, bases: list[str], tenant: BenchTenant, load: Load) -> Audit:
    """Reads the timeline of every chat of the load in full (from each base in turn) and counts its messages, and
    compares each chat's unread count with them."""
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    shown: list[str] = []
    page_ms: list[float] = []
    miscounted = before = 0
    customers = set(load.wamids.values())
    for n, (wa_id, chat_id) in enumerate(load.chat_ids.items()):
        if wa_id not in customers:
            continue
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            began = time.perf_counter()
            url = f"{bases[n % len(bases)]}/v1/chats/{chat_id}/messages"
            page = (await http.get(url, headers=headers, params=params)).json()
            page_ms.append((time.perf_counter() - began) * 1000)
            shown += [item["wamid"] for item in page["items"] if item["kind"] == "message"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        chat = (await http.get(f"{bases[n % len(bases)]}/v1/chats/{chat_id}", headers=headers)).json()
        miscounted += abs(chat["unread_count"] - (len(shown) - before))  # never read: every message is unread
        before = len(shown)
    counts = Counter(shown)
    unique = sum(1 for wamid in load.wamids if counts[wamid])
    duplicated = sum(counts[wamid] - 1 for wamid in load.wamids if counts[wamid] > 1)
    return Audit(unique, len(load.wamids) - unique, duplicated, page_ms, miscounted)


# --- one measured run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """What one measured run showed."""

    rate: float
    duration: float
    sent: int
    failed_sends: int
    sending_s: float
    latencies: list[float]  # webhook due -> visible, of the messages seen before the settle deadline
    audit: Audit
    events: float  # consumed by conversation while busy
    busy_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / max(self.busy_s, 1e-9)

    def held(self, p99_ms: float) -> bool:
        """Every message visible in time, none lost, none duplicated, p99 under `p99_ms`."""
        complete = len(self.latencies) == self.sent and not self.failed_sends
        clean = not self.audit.lost and not self.audit.duplicated
        return complete and clean and pct(self.latencies, 99) < p99_ms


@dataclass(frozen=True)
class Settings:
    connections: int = 64  # keep-alive connections to the simulator
    poll_ms: float = 100.0
    settle: float = 60.0  # seconds to wait for stragglers; a run not seen in full by then is measured as is
    drain: float = 0.0  # further seconds to wait (unmeasured) for the rest, before the audit


async def measured_run(
    http: httpx.AsyncClient,
    stack: Stack,
    tenant: BenchTenant,
    customers: list[str],
    *,
    rate: float,
    duration: float,
    warm_total: int,
    settings: Settings,
) -> Run:
    """Warm-up (`warm_total` messages at `rate`, at least one per customer so their chats exist, not measured),
    then `rate` msg/s for `duration` s, then wait for what is not visible yet, then the audit."""
    load = Load()
    stop = asyncio.Event()
    poller = asyncio.create_task(
        poll_visibility(http, stack.bases, tenant, load, stop, settings.poll_ms / 1000), name="poll"
    )
    try:
        warm_total = max(warm_total, len(customers))
        c = settings.connections
        await send_load(stack.simulator, tenant, load, customers, total=warm_total, rate=rate, connections=c)
        warm_deadline = time.monotonic() + 120
        while load.seen() < warm_total and time.monotonic() < warm_deadline:
            await asyncio.sleep(0.1)
        load.rebase()
        events_before = await consumed_events(http, stack.conversation)
        started = time.monotonic()
        total = int(rate * duration)
        await send_load(stack.simulator, tenant, load, customers, total=total, rate=rate, connections=c)
        sending_s = time.monotonic() - started
        deadline = time.monotonic() + settings.settle
        while load.seen() < load.expected() - load.failed_sends and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        latencies = load.latencies()
        busy_until = max((v[-1] for v in load.visible.values() if v), default=time.monotonic())
        events = await consumed_events(http, stack.conversation) - events_before
        deadline = time.monotonic() + settings.drain
        while load.seen() < load.expected() - load.failed_sends and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await poller
    checked = await audit(http, stack.bases, tenant, load)
    return Run(
        rate, duration, load.expected(), load.failed_sends, sending_s, latencies, checked, events, busy_until - started
    )
