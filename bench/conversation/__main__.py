"""Benchmark conversation: customers write through the WhatsApp simulator at a fixed rate; how soon is each
message visible in the chat API, is any lost or duplicated, and how fast does the consumer go?

    uv run python -m bench.conversation [--rate 500] [--duration 60] [--warmup 20] [--customers 200] [--concurrency 16]

Runs the simulator, ingest and conversation as separate processes (uvicorn each). Uses KAFKA_BOOTSTRAP_SERVERS
and MONGODB_URI when both are set, else starts a Kafka and a database server of its own (deploy/local/infra.sh).

Open loop: message i is due at start + i/rate; its latency runs from when it was due (so a slow pipeline cannot
hide queueing) to when the chat API first shows it. Visibility is read from the chat list every --poll-ms: the
bench never marks chats read, so a chat's unread count is how many of its messages are visible, and the k-th
message sent to a customer counts as visible when that chat's count first reaches k (the resolution is the poll
interval). At the end every chat's timeline is read in full and compared with what was sent: lost = sent but
absent, duplicated = shown more than once; the time each of those page reads took is printed too. Events/s is
conversation's consumer counter over the busy period.
Prints figures; asserts nothing.
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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.figures import figure
from bench.infra import BenchTenant, bench_environment, free_port, seed_tenant, settings_from, wait_healthy
from bench.loadgen import Connection, build_request

APP_ID, SECRET, NUMBER, WABA = "900100200399", "bench-app-secret", "900000000000091", "900000000000092"
DISPLAY, API_KEY, TOKEN = "15550001299", "wf_bench_conversation", "bench-access-token"
TENANT = BenchTenant("bench-conversation", APP_ID, SECRET, NUMBER, WABA, DISPLAY, TOKEN, API_KEY)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


@dataclass
class Load:
    due: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # wa_id -> due times, in order
    wamids: dict[str, str] = field(default_factory=dict)  # wamid -> wa_id
    failed_sends: int = 0
    visible: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # wa_id -> k-th seen time
    chat_ids: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)  # warm-up messages per chat, not measured

    def expected(self) -> int:
        return sum(len(v) for v in self.due.values())

    def seen(self) -> int:
        return sum(len(v) for v in self.visible.values())


async def consumed_events(http: httpx.AsyncClient, port: int) -> float:
    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(float(m) for m in re.findall(r"^waflow_conversation_events_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


async def send_load(
    args: argparse.Namespace, sim_port: int, load: Load, customers: list[str], *, total: int, rate: float
) -> None:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(args.connections):
        pool.put_nowait(Connection("127.0.0.1", sim_port))
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []

    async def send(i: int, due: float) -> None:
        wa_id = customers[i % len(customers)]
        wamid = f"wamid.BENCH{uuid.uuid4().hex}"
        body = {
            "phone_number_id": NUMBER,
            "from": wa_id,
            "name": f"Customer {wa_id[-4:]}",
            "type": "text",
            "content": {"body": f"message {i}"},
            "wamid": wamid,
            "wait": True,
        }
        load.due[wa_id].append(due)
        load.wamids[wamid] = wa_id
        raw = build_request("127.0.0.1", sim_port, "/_sim/customers/messages", json.dumps(body).encode(), {})
        connection = await pool.get()
        try:
            status = await connection.request(raw)
            if status != 200:
                load.failed_sends += 1
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


async def poll_visibility(http: httpx.AsyncClient, base: str, load: Load, stop: asyncio.Event, interval: float) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while not stop.is_set():
        now = time.monotonic()
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = (await http.get(f"{base}/v1/chats", headers=headers, params=params)).json()
            for chat in page["items"]:
                wa_id = chat["wa_id"]
                load.chat_ids[wa_id] = chat["chat_id"]
                shown = load.visible[wa_id]
                while len(shown) < chat["unread_count"] - load.baseline.get(wa_id, 0):
                    shown.append(now)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - now)))


async def audit(http: httpx.AsyncClient, base: str, load: Load) -> tuple[int, int, int, list[float]]:
    """Reads every chat's full timeline: (unique messages shown, lost, duplicated, ms per page read)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    shown: list[str] = []
    page_ms: list[float] = []
    for chat_id in load.chat_ids.values():
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            began = time.perf_counter()
            page = (await http.get(f"{base}/v1/chats/{chat_id}/messages", headers=headers, params=params)).json()
            page_ms.append((time.perf_counter() - began) * 1000)
            shown += [item["wamid"] for item in page["items"] if item["kind"] == "message"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    unique = set(shown)
    lost = len(set(load.wamids) - unique)
    return len(unique), lost, len(shown) - len(unique), page_ms


async def measure(args: argparse.Namespace, env: dict[str, str]) -> None:
    ports = {"simulator": free_port(), "ingest": free_port(), "conversation": free_port()}
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bin_dir / "waflow-simulator")],
            env=env | {"SIMULATOR_PORT": str(ports["simulator"]), "SIMULATOR_WEBHOOK_MAX_CONNECTIONS": "64"},
        ),
        subprocess.Popen([str(bin_dir / "waflow-ingest")], env=env | {"INGEST_PORT": str(ports["ingest"])}),
        subprocess.Popen(
            [str(bin_dir / "waflow-conversation")],
            env=env
            | {
                "CONVERSATION_PORT": str(ports["conversation"]),
                "CONVERSATION_CONSUMER_CONCURRENCY": str(args.concurrency),
            },
        ),
    ]
    load = Load()
    try:
        await asyncio.gather(*(wait_healthy(p) for p in ports.values()))
        base = f"http://127.0.0.1:{ports['conversation']}"
        async with httpx.AsyncClient(timeout=60) as http:
            sim = f"http://127.0.0.1:{ports['simulator']}"
            await http.put(
                f"{sim}/_sim/apps/{APP_ID}",
                json={
                    "app_secret": SECRET,
                    "webhook_url": f"http://127.0.0.1:{ports['ingest']}/webhooks/whatsapp/{APP_ID}",
                },
            )
            await http.put(
                f"{sim}/_sim/numbers/{NUMBER}",
                json={
                    "display_phone_number": DISPLAY,
                    "waba_id": WABA,
                    "app_id": APP_ID,
                    "access_token": TOKEN,
                },
            )
            run = uuid.uuid4().int
            customers = [f"1555{(run + i) % 10**7:07d}" for i in range(args.customers)]
            stop = asyncio.Event()
            poller = asyncio.create_task(poll_visibility(http, base, load, stop, args.poll_ms / 1000))
            # Warm-up, not measured: at least one message per customer creates the chats and lets the consumer
            # group settle (its first rebalances pause consumption for seconds); --warmup seconds at the full
            # rate let a just-started Kafka's JIT compiler finish (it takes much of a core for 15-20 s of load).
            warm_total = max(len(customers), int(args.rate * args.warmup))
            await send_load(args, ports["simulator"], load, customers, total=warm_total, rate=args.rate)
            warm_deadline = time.monotonic() + 120
            while load.seen() < warm_total and time.monotonic() < warm_deadline:
                await asyncio.sleep(0.1)
            load.baseline = {wa_id: len(shown) for wa_id, shown in load.visible.items()}
            load.visible.clear()
            load.due.clear()
            events_before = await consumed_events(http, ports["conversation"])
            started = time.monotonic()
            total = int(args.rate * args.duration)
            await send_load(args, ports["simulator"], load, customers, total=total, rate=args.rate)
            sent_done = time.monotonic()
            deadline = sent_done + args.settle
            while load.seen() < load.expected() - load.failed_sends and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await poller
            busy_until = max((v[-1] for v in load.visible.values() if v), default=time.monotonic())
            events_after = await consumed_events(http, ports["conversation"])
            unique, lost, duplicated, page_ms = await audit(http, base, load)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)

    latencies = [
        (shown - due) * 1000
        for wa_id, dues in load.due.items()
        for due, shown in zip(sorted(dues), load.visible.get(wa_id, []), strict=False)
    ]
    sent = load.expected()
    print(
        f"\nconversation: {args.rate:.0f} msg/s for {args.duration:.0f} s over {args.customers} customers, "
        f"{args.concurrency} chats applied at once, poll every {args.poll_ms:.0f} ms"
    )
    print(f"  sent {sent}   send errors {load.failed_sends}   sending took {sent_done - started:.1f} s")
    print(
        f"  webhook -> visible in chat API: p50 {pct(latencies, 50):.0f} ms   p95 {pct(latencies, 95):.0f} ms   "
        f"p99 {pct(latencies, 99):.0f} ms   max {max(latencies, default=float('nan')):.0f} ms   "
        f"(measured {len(latencies)})"
    )
    print(f"  in timelines: {unique} unique   lost {lost}   duplicated {duplicated}   (targets: 0 and 0)")
    load_name = f"{args.rate:.0f} msg/s for {args.duration:.0f} s"
    figure(f"webhook -> visible p99, {load_name}", pct(latencies, 99), unit="ms", target="< 500 ms at 500 msg/s")
    figure(f"lost, {load_name}", lost, target="0")
    figure(f"duplicated, {load_name}", duplicated, target="0")
    print(
        f"  reading them, idle: a timeline page of up to 200 items in p50 {pct(page_ms, 50):.0f} ms   "
        f"p99 {pct(page_ms, 99):.0f} ms   ({len(page_ms)} pages)"
    )
    busy = max(busy_until - started, 1e-9)
    print(
        f"  consumer: {events_after - events_before:.0f} events in {busy:.1f} s = "
        f"{(events_after - events_before) / busy:.0f} events/s   (target p99 < 500 ms)"
    )
    figure("consumer events/s", (events_after - events_before) / busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="customer messages per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16, help="chats the consumer applies at once")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections to the simulator")
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for stragglers")
    args = parser.parse_args()

    with bench_environment("conversation", mongo=True) as env:
        asyncio.run(seed_tenant(settings_from(env), TENANT))
        asyncio.run(measure(args, env))


if __name__ == "__main__":
    main()
