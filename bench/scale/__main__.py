"""Benchmark conversation scaled out: 1 and 2 instances in one run, its capacity as a ratio to a bare endpoint,
and its memory at 10k and 100k chats.

    uv run python -m bench.scale [--rate 200] [--duration 60] [--steps 6] [--instances 1,2] [--chats 10000,100000]

Separate OS processes: the WhatsApp simulator, ingest, conversation (1, then 2 in the same consumer group, each
on its own port; the chat list and timelines are read from each in turn) and bench/ingest/bare.py. Uses
KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI when both are set, else starts a Kafka and a database server of its own.

1. Bare: the same load generator (bench.loadgen's keep-alive connections) and simulator push customer messages to
   a FastAPI endpoint that only accepts the webhook POST, closed loop (as fast as it answers) for --bare-duration:
   the rate they can push at all on this machine, in this run.
2. For each instance count: open-loop steps (bench/pipeline.py: latency from when a message was due to when the
   chat list shows it; every timeline audited for lost and duplicated), each with fresh customers: starting at
   --rate, doubling while a step holds (every message visible within --settle, p99 < --p99-ms, 0 lost, 0
   duplicated), then bisecting, --steps in all. The first step gives throughput and p99 at --rate; capacity is
   the highest rate held, and capacity / bare the ratio. A step's backlog drains before the next one.
3. For each of --chats (cumulative, one tenant): chats seeded into conversation's database (bench/scale/rss.py
   says how), a fresh single conversation process, --rss-messages customer messages through the simulator
   while chat list pages, unread-filter pages, timelines and one search are read; then VmRSS and VmHWM from
   /proc/<pid>/status.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import uuid

import httpx

from bench.figures import figure
from bench.infra import BenchTenant, bench_environment, free_port, seed_tenant, settings_from, wait_healthy
from bench.loadgen import Result, closed_loop
from bench.pipeline import (
    Run,
    Settings,
    Stack,
    add_pipeline_arguments,
    customer_message,
    ingest_url,
    measured_run,
    new_customers,
    pct,
    register_number,
    start_bare,
    start_conversation,
    start_ingest,
    start_simulator,
    stop,
)
from bench.scale import rss

TENANT = BenchTenant(
    "bench-scale", "900100200501", "bench-app-secret", "900000000000501", "900000000000502", "15550001501",
    "bench-access-token", "wf_bench_scale",
)  # fmt: skip
BARE = BenchTenant(
    "bench-bare", "900100200511", "bench-app-secret", "900000000000511", "900000000000512", "15550001511",
    "bench-access-token", "wf_bench_bare",
)  # fmt: skip
MANY = BenchTenant(
    "bench-many", "900100200521", "bench-app-secret", "900000000000521", "900000000000522", "15550001521",
    "bench-access-token", "wf_bench_many",
)  # fmt: skip
P99_MS = 500.0


async def bare_rate(sim_port: int, args: argparse.Namespace) -> Result:
    customers = new_customers(args.customers)

    def request(i: int) -> bytes:
        return customer_message(sim_port, BARE, customers[i % len(customers)], f"wamid.BARE{uuid.uuid4().hex}", i)

    await closed_loop("127.0.0.1", sim_port, request, concurrency=args.connections, duration_s=2)  # warm-up
    return await closed_loop(
        "127.0.0.1", sim_port, request, concurrency=args.connections, duration_s=args.bare_duration
    )


def step_line(run: Run) -> str:
    a = run.audit
    return (
        f"    {run.rate:6.0f} msg/s: p50 {pct(run.latencies, 50):5.0f} ms  p99 {pct(run.latencies, 99):6.0f} ms  "
        f"visible {len(run.latencies)}/{run.sent}  send errors {run.failed_sends}  lost {a.lost}  "
        f"duplicated {a.duplicated}  unread miscounted {a.miscounted}  consumer {run.events_per_s:.0f} events/s  -> "
        f"{'held' if run.held(P99_MS) else 'not held'}"
    )


async def capacity(http: httpx.AsyncClient, stack: Stack, args: argparse.Namespace) -> tuple[list[Run], float]:
    """The steps (first at --rate) and the highest rate held (0 if none)."""
    settings = Settings(args.connections, args.poll_ms, args.settle, drain=args.drain)
    runs: list[Run] = []
    held, failed, rate = 0.0, math.inf, args.rate
    for step in range(args.steps):
        run = await measured_run(
            http,
            stack,
            TENANT,
            new_customers(args.customers),
            rate=rate,
            duration=args.duration,
            warm_total=int(rate * args.warmup) if step == 0 else 0,
            settings=settings,
        )
        runs.append(run)
        print(step_line(run), flush=True)
        if run.held(P99_MS):
            held = max(held, rate)
        else:
            failed = min(failed, rate)
        if failed == math.inf:
            rate *= 2
        elif held == 0:
            rate /= 2
        elif failed / held < 1.1:
            break
        else:
            rate = (held + failed) / 2
    return runs, held


async def scale_out(args: argparse.Namespace, env: dict[str, str], stack: Stack, http: httpx.AsyncClient) -> None:
    bare = await bare_rate(stack.simulator, args)
    print(
        f"\nbare endpoint through the simulator, closed loop, {args.connections} connections, "
        f"{args.bare_duration:.0f} s"
    )
    print("  " + bare.summary("bare FastAPI"))
    figure("load generator + simulator -> bare FastAPI", bare.requests_per_s, unit="msg/s")
    conversation: list[subprocess.Popen[bytes]] = []
    held: dict[int, float] = {}
    try:
        for instances in args.instances:
            while len(stack.conversation) < instances:
                port = free_port()
                conversation.append(start_conversation(env, port, args.concurrency))
                stack.conversation.append(port)
                await wait_healthy(port)
            print(
                f"\n{instances} conversation instance(s), {args.customers} new customers a step, "
                f"{args.duration:.0f} s a step"
            )
            runs, held[instances] = await capacity(http, stack, args)
            first = runs[0]
            name = f"{instances} instance(s)"
            figure(f"{name}: p99 at {first.rate:.0f} msg/s", pct(first.latencies, 99), unit="ms", target="< 500 ms")
            figure(f"{name}: consumer at {first.rate:.0f} msg/s", first.events_per_s, unit="events/s")
            figure(
                f"{name}: lost / duplicated at {first.rate:.0f} msg/s",
                f"{first.audit.lost} / {first.audit.duplicated}",
                target="0 / 0",
            )
            figure(f"{name}: capacity (p99 < 500 ms, 0 lost)", held[instances], unit="msg/s")
            ratio = held[instances] / max(bare.requests_per_s, 1e-9)
            print(f"  capacity {held[instances]:.0f} msg/s = {ratio:.2f} x bare ({bare.requests_per_s:.0f} msg/s)")
            figure(f"{name}: capacity / bare endpoint", ratio)
    finally:
        stop(conversation)
        stack.conversation.clear()
    if 1 in held and 2 in held and held[1]:
        figure("capacity, 2 instances / 1", held[2] / held[1])


async def memory(args: argparse.Namespace, env: dict[str, str], stack: Stack, http: httpx.AsyncClient) -> None:
    settings = settings_from(env)
    seeded = 0
    rss_mb: dict[int, float] = {}
    for chats in args.chats:
        took = await rss.seed_chats(settings, MANY, seeded, chats)
        print(f"\n{chats} chats: seeded {chats - seeded} in {took:.0f} s")
        seeded = chats
        port = free_port()
        process = start_conversation(env, port, args.concurrency)
        try:
            await wait_healthy(port)
            idle = rss.memory_kb(process.pid)
            queries = await rss.traffic(
                http, stack.simulator, f"http://127.0.0.1:{port}", MANY, chats,
                messages=args.rss_messages, rate=args.rss_rate, pages=args.pages, timelines=args.timelines,
                search=args.search,
            )  # fmt: skip
            after = rss.memory_kb(process.pid)
        finally:
            stop([process])
        print(f"  started: VmRSS {idle['VmRSS'] / 1024:.0f} MB   after the load: VmRSS {after['VmRSS'] / 1024:.0f} MB")
        print(f"  VmHWM {after['VmHWM'] / 1024:.0f} MB   {rss.describe(queries)}")
        rss_mb[chats] = after["VmRSS"] / 1024
        figure(f"conversation VmRSS at {chats} chats", rss_mb[chats], unit="MB", target="< 200 MB, flat")
        figure(f"conversation VmHWM at {chats} chats", after["VmHWM"] / 1024, unit="MB", target="< 200 MB")
    await rss.drop(settings)
    if len(rss_mb) >= 2:
        sizes = sorted(rss_mb)
        ratio = rss_mb[sizes[-1]] / rss_mb[sizes[0]]
        print(f"\n  VmRSS at {sizes[-1]} / at {sizes[0]} chats: {ratio:.2f}")
        figure(f"VmRSS {sizes[-1]} / {sizes[0]} chats", ratio, target="flat (about 1)")


async def measure(args: argparse.Namespace, env: dict[str, str]) -> None:
    stack = Stack()
    bare_port = free_port()
    procs = [start_simulator(env, stack.simulator), start_ingest(env, stack.ingest), start_bare(env, bare_port)]
    try:
        await asyncio.gather(
            wait_healthy(stack.simulator), wait_healthy(stack.ingest), wait_healthy(bare_port, "/docs")
        )
        async with httpx.AsyncClient(timeout=120) as http:
            await register_number(http, stack.simulator, TENANT, ingest_url(stack, TENANT))
            await register_number(http, stack.simulator, MANY, ingest_url(stack, MANY))
            bare_url = f"http://127.0.0.1:{bare_port}/webhooks/whatsapp/{BARE.app_id}"
            await register_number(http, stack.simulator, BARE, bare_url)
            if args.instances:
                await scale_out(args, env, stack, http)
            if args.chats:
                await memory(args, env, stack, http)
    finally:
        stop(procs)


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="customer messages per second of the first step")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load a step")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the first step")
    parser.add_argument("--steps", type=int, default=6, help="capacity steps per instance count")
    parser.add_argument("--customers", type=int, default=200, help="new customers a step")
    parser.add_argument("--instances", type=numbers, default=[1, 2], help="e.g. 1,2 (empty: skip)")
    add_pipeline_arguments(parser, settle=10.0)
    parser.add_argument("--drain", type=float, default=120.0, help="seconds more for a step's backlog to drain")
    parser.add_argument("--bare-duration", type=float, default=10.0)
    parser.add_argument("--chats", type=numbers, default=[10_000, 100_000], help="e.g. 10000,100000 (empty: skip)")
    parser.add_argument("--rss-messages", type=int, default=3000, help="customer messages at each size")
    parser.add_argument("--rss-rate", type=float, default=100.0)
    parser.add_argument("--pages", type=int, default=100, help="chat list (and unread) pages of 50 at each size")
    parser.add_argument("--timelines", type=int, default=100, help="timelines read at each size")
    parser.add_argument("--search", action="store_true", help="also one chat search at each size (slow)")
    args = parser.parse_args()

    with bench_environment("scale", mongo=True) as env:
        settings = settings_from(env)
        for tenant in (TENANT, BARE, MANY):
            asyncio.run(seed_tenant(settings, tenant))
        asyncio.run(measure(args, env))


if __name__ == "__main__":
    main()
