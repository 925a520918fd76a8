"""Outbound benchmark: many send requests over 2 numbers at 80 msg/s (and 2 at 1,000 with --fast) through Kafka,
outbound and the simulator, with 1 and with 2 outbound instances; prints achieved rate, the busiest second,
request-to-accept latency and duplicates per number.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 MONGODB_URI=mongodb://127.0.0.1:27017 \
        uv run python -m bench.outbound.run [--requests 4000] [--instances 1,2] [--fast]

Outbound runs as its own processes (as deployed), sharing one database and one consumer group; the simulator
and the load generator share this one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from waflow_common import topics
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.events.outbound import SendRequested, SendRequestedEvent, TemplateMessage
from waflow_common.events.tenants import PhoneNumber
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings
from waflow_simulator.client import SimulatorClient
from waflow_simulator.main import create_app as create_simulator
from waflow_simulator.settings import SimulatorSettings
from waflow_testing.fixtures import free_port, serve

from bench.figures import figure

APP_ID = "900100200300"
COUNTERS = ("waflow_outbound_calls_total", "waflow_outbound_permit_tries_total", "waflow_outbound_call_s")
# (tenant, phone_number_id, waba_id, display number, rate): two tenants, each with a slow and a fast number.
ALL_NUMBERS = [
    ("bench-a", "210000000000001", "310000000000001", "15550100001", 80),
    ("bench-a", "210000000000002", "310000000000001", "15550100002", 1000),
    ("bench-b", "210000000000003", "310000000000003", "15550100003", 80),
    ("bench-b", "210000000000004", "310000000000003", "15550100004", 1000),
]
NUMBERS: list[tuple[str, str, str, str, int]] = [n for n in ALL_NUMBERS if n[4] == 80]


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def setup_tenants(settings: CommonSettings, simulator: SimulatorClient) -> None:
    async with Admin(settings) as admin:
        await admin.put_app(AppFile(app_id=APP_ID, name="bench", app_secret="bench-secret", verify_token="bench-token"))
        for _ in range(100):
            if admin.registry.app(APP_ID):
                break
            await asyncio.sleep(0.05)
        for tenant_id in sorted({n[0] for n in NUMBERS}):
            mine = [n for n in NUMBERS if n[0] == tenant_id]
            await admin.put_tenant(
                TenantFile(
                    tenant_id=tenant_id,
                    name=tenant_id,
                    app_id=APP_ID,
                    phone_numbers=[
                        PhoneNumber(phone_number_id=p, waba_id=w, display_phone_number=d, rate_per_second=r)
                        for _, p, w, d, r in mine
                    ],
                    access_token=f"token-{tenant_id}",
                    api_keys=[f"key-{tenant_id}"],
                )
            )
    await simulator.put_app(APP_ID, app_secret="bench-secret", webhook_url="http://127.0.0.1:9/none")
    for tenant_id, pnid, waba_id, display, rate in NUMBERS:
        await simulator.put_number(
            pnid,
            display_phone_number=display,
            waba_id=waba_id,
            app_id=APP_ID,
            access_token=f"token-{tenant_id}",
            rate_per_second=rate,  # the simulator answers 130429 above it, like Meta
            status_flow="none",
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4_000, help="total send requests (split over the numbers)")
    parser.add_argument("--instances", default="1,2", help="outbound instance counts to run, one run each")
    parser.add_argument("--fast", action="store_true", help="also two numbers at 1,000 msg/s")
    parser.add_argument("--per-recipient", type=int, default=4, help="messages per customer")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--simulator-process", action="store_true", help="run the simulator in its own process, not beside the load"
    )
    parser.add_argument("--one-number", action="store_true", help="one number at 80/s instead of two (one per tenant)")
    args = parser.parse_args()
    global NUMBERS
    if args.fast:
        NUMBERS = ALL_NUMBERS
    if args.one_number:
        NUMBERS = NUMBERS[:1]
    for count in [int(c) for c in args.instances.split(",")]:
        print(f"\n=== {count} outbound instance(s) ===")
        await one_run(args, count)


async def one_run(args: argparse.Namespace, instances: int) -> None:
    run = uuid.uuid4().hex[:6]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        "MONGODB_URI": os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"),
        "WAFLOW_SECRETS_KEY": generate_key(),
        "WAFLOW_TOPIC_PREFIX": f"bench{run}.",
        "WAFLOW_DB_PREFIX": f"bench{run}_",
        "LOG_LEVEL": "WARNING",
    }
    settings = CommonSettings.model_validate({k.lower(): v for k, v in env.items()})
    await ensure_topics(settings)

    async with simulator_served(args.simulator_process) as sim_url, SimulatorClient(sim_url) as simulator:
        await setup_tenants(settings, simulator)
        ports = [free_port() for _ in range(instances)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "waflow_outbound.main"],
                env=os.environ | env | {"WHATSAPP_API_BASE_URL": sim_url, "OUTBOUND_PORT": str(port)},
            )
            for port in ports
        ]
        try:
            await run_load(args, settings, simulator, [f"http://127.0.0.1:{port}" for port in ports], instances)
            for port in ports:
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                print(f"\noutbound :{port}'s own counters:")
                for line in metrics.splitlines():
                    if line.startswith(COUNTERS):
                        print(" ", line)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=30)


@asynccontextmanager
async def simulator_served(own_process: bool) -> AsyncIterator[str]:
    """The simulator in this process (beside the load generator), or in its own, as outbound is."""
    if not own_process:
        sim_app = create_simulator(SimulatorSettings(retry_max_attempts=1, max_log_entries=1_000_000))
        async with serve(sim_app) as url:
            yield url
        return
    port = free_port()
    env = {"SIMULATOR_PORT": str(port), "SIMULATOR_RETRY_MAX_ATTEMPTS": "1", "SIMULATOR_MAX_LOG_ENTRIES": "1000000"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from waflow_simulator.main import run; run()"], env=os.environ | env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


async def run_load(
    args: argparse.Namespace, settings: CommonSettings, simulator: SimulatorClient, urls: list[str], instances: int
) -> None:
    async with httpx.AsyncClient() as http:
        for url in urls:
            for _ in range(1200):
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
    if instances > 1:
        await asyncio.sleep(5.0)  # every instance has joined the consumer groups

    results = AIOKafkaConsumer(
        settings.topic(topics.OUTBOUND_RESULTS),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await results.start()
    broker = make_broker(settings, client_id="bench-outbound")
    await broker.start()
    publisher = EventPublisher(broker, settings)

    per_number = args.requests // len(NUMBERS)
    requested_at: dict[str, float] = {}
    number_of: dict[str, str] = {}
    commands = []
    for tenant_id, pnid, _, _, _ in NUMBERS:
        for i in range(per_number):
            request_id = f"{pnid}-{i}"
            wa_id = f"1666{pnid[-1]}{i // args.per_recipient:07d}"
            number_of[request_id] = pnid
            commands.append(
                SendRequestedEvent.new(
                    tenant_id=tenant_id,
                    payload=SendRequested(
                        request_id=request_id,
                        phone_number_id=pnid,
                        wa_id=wa_id,
                        message=TemplateMessage(name="open_template", parameters={"SENTENCE": f"#{i}"}),
                        requested_by="bench",
                    ),
                )
            )
    # Interleave the numbers, as real traffic would arrive.
    commands.sort(key=lambda c: int(c.payload.request_id.rsplit("-", 1)[1]))

    outcome: dict[str, str] = {}
    accepted_at: dict[str, float] = {}

    async def collect() -> None:
        while len(outcome) < len(commands):
            batches = await results.getmany(timeout_ms=500)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    rid = event["payload"]["request_id"]
                    if rid in outcome:
                        continue
                    outcome[rid] = event["payload"].get("reason", "accepted")
                    accepted_at[rid] = now

    collector = asyncio.create_task(collect())
    started = time.perf_counter()
    for start in range(0, len(commands), 500):
        chunk = commands[start : start + 500]
        now = time.perf_counter()
        for c in chunk:
            requested_at[c.payload.request_id] = now
        await publisher.publish_many(chunk)
    published = time.perf_counter() - started
    try:
        await asyncio.wait_for(collector, timeout=args.timeout)
    except TimeoutError:
        print(f"TIMEOUT: {len(outcome)}/{len(commands)} results after {args.timeout:.0f}s")
    elapsed = time.perf_counter() - started
    await results.stop()
    await broker.stop()

    sent = await simulator.sent()
    by_number: dict[str, list[Any]] = defaultdict(list)
    for s in sent:
        by_number[s.phone_number_id].append(s)
    print(f"\n{len(commands)} requests published in {published:.1f}s; all results after {elapsed:.1f}s\n")
    header = (
        f"{'number':>16} {'rate':>5} {'accepted':>8} {'other':>6} {'msg/s':>7} {'busiest 1s':>10} "
        f"{'p50 s':>7} {'p99 s':>7} {'130429':>6} {'dups':>5}"
    )
    print(header)
    total_dups = 0
    over_rate = 0
    for _, pnid, _, _, rate in NUMBERS:
        calls = by_number[pnid]
        ok = [s for s in calls if s.wamid is not None]
        times = [s.received_at for s in ok]
        span = (max(times) - min(times)) if len(times) > 1 else float("nan")
        ids = Counter(s.body.get("biz_opaque_callback_data") for s in ok)
        dups = sum(c - 1 for c in ids.values())
        total_dups += dups
        mine = [rid for rid, n in number_of.items() if n == pnid]
        accepted = [rid for rid in mine if outcome.get(rid) == "accepted"]
        latencies = [accepted_at[rid] - requested_at[rid] for rid in accepted]
        print(
            f"{pnid:>16} {rate:>5} {len(accepted):>8} {len(mine) - len(accepted):>6} "
            f"{(len(times) - 1) / span if span == span and span > 0 else float('nan'):>7.1f} "
            f"{busiest_second(times):>10} {percentile(latencies, 0.5):>7.2f} {percentile(latencies, 0.99):>7.2f} "
            f"{sum(1 for s in calls if s.error_code == 130429):>6} {dups:>5}"
        )
        refused_at = [s.received_at - min(times) for s in calls if s.error_code == 130429 and times]
        if refused_at:
            print(f"{'':>16} 130429 at +s: {' '.join(f'{t:.1f}' for t in sorted(refused_at)[:20])}")
        over_rate += busiest_second(times) > rate
        if rate == 80 and span == span and span > 0:
            figure(
                f"sustained msg/s at 80/s ({pnid[-1]}), {instances} instance(s)",
                (len(times) - 1) / span,
                target=">= 76",
            )
    all_latencies = [accepted_at[r] - requested_at[r] for r, o in outcome.items() if o == "accepted"]
    print(
        f"\noverall: {sum(1 for o in outcome.values() if o == 'accepted')} accepted, "
        f"{dict(Counter(o for o in outcome.values() if o != 'accepted'))} other; "
        f"p50 {statistics.median(all_latencies) if all_latencies else float('nan'):.2f}s, "
        f"p99 {percentile(all_latencies, 0.99):.2f}s request-to-accept; duplicates sent: {total_dups}"
    )
    accepted_times = [s.received_at for s in sent if s.wamid is not None]
    if len(accepted_times) > 1 and max(accepted_times) > min(accepted_times):
        all_span = max(accepted_times) - min(accepted_times)
        # What the instances sent in all, every number at its rate: bench.capacity's per-instance figure.
        figure(f"sends/s, all numbers, {instances} instance(s)", (len(accepted_times) - 1) / all_span, unit="msg/s")
    figure(f"duplicate sends, {len(commands)} requests, {instances} instance(s)", total_dups, target="0")
    figure(f"numbers whose busiest second exceeded their rate, {instances} instance(s)", over_rate, target="0")
    figure(f"request-to-accept p99, {instances} instance(s)", percentile(all_latencies, 0.99), unit="s")


if __name__ == "__main__":
    asyncio.run(main())
