"""Benchmark conversation: customers write through the WhatsApp simulator at a fixed rate; how soon is each
message visible in the chat API, is any lost or duplicated, and how fast does the consumer go?

    uv run python -m bench.conversation [--rate 500] [--duration 60] [--warmup 20] [--customers 200] [--concurrency 16]

Runs the simulator, ingest and conversation as separate processes (uvicorn each). Uses KAFKA_BOOTSTRAP_SERVERS
and MONGODB_URI when both are set, else starts a Kafka and a database server of its own (deploy/local/infra.sh).

How latency, loss and duplication are measured: see bench/pipeline.py (open loop, latency from when each message
was due to when the chat list first shows it; at the end every chat's timeline is read in full: lost = sent but
absent, duplicated = shown more than once; the time each of those page reads took is printed too). Events/s is
conversation's consumer counter over the busy period.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from bench.figures import figure
from bench.infra import BenchTenant, bench_environment, free_port, seed_tenant, settings_from, wait_healthy
from bench.pipeline import (
    Settings,
    Stack,
    add_pipeline_arguments,
    ingest_url,
    measured_run,
    new_customers,
    pct,
    register_number,
    start_conversation,
    start_ingest,
    start_simulator,
    stop,
)

APP_ID, SECRET, NUMBER, WABA = "900100200399", "bench-app-secret", "900000000000091", "900000000000092"
DISPLAY, API_KEY, TOKEN = "15550001299", "wf_bench_conversation", "bench-access-token"
TENANT = BenchTenant("bench-conversation", APP_ID, SECRET, NUMBER, WABA, DISPLAY, TOKEN, API_KEY)


async def measure(args: argparse.Namespace, env: dict[str, str]) -> None:
    stack = Stack(conversation=[free_port()])
    procs = [
        start_simulator(env, stack.simulator),
        start_ingest(env, stack.ingest),
        start_conversation(env, stack.conversation[0], args.concurrency),
    ]
    try:
        await asyncio.gather(*(wait_healthy(p) for p in [stack.simulator, stack.ingest, *stack.conversation]))
        async with httpx.AsyncClient(timeout=60) as http:
            await register_number(http, stack.simulator, TENANT, ingest_url(stack, TENANT))
            # Warm-up, not measured: at least one message per customer creates the chats and lets the consumer
            # group settle (its first rebalances pause consumption for seconds); --warmup seconds at the full
            # rate let a just-started Kafka's JIT compiler finish (it takes much of a core for 15-20 s of load).
            run = await measured_run(
                http,
                stack,
                TENANT,
                new_customers(args.customers),
                rate=args.rate,
                duration=args.duration,
                warm_total=int(args.rate * args.warmup),
                settings=Settings(args.connections, args.poll_ms, args.settle),
            )
    finally:
        stop(procs)

    latencies = run.latencies
    print(
        f"\nconversation: {args.rate:.0f} msg/s for {args.duration:.0f} s over {args.customers} customers, "
        f"{args.concurrency} chats applied at once, poll every {args.poll_ms:.0f} ms"
    )
    print(f"  sent {run.sent}   send errors {run.failed_sends}   sending took {run.sending_s:.1f} s")
    print(
        f"  webhook -> visible in chat API: p50 {pct(latencies, 50):.0f} ms   p95 {pct(latencies, 95):.0f} ms   "
        f"p99 {pct(latencies, 99):.0f} ms   max {max(latencies, default=float('nan')):.0f} ms   "
        f"(measured {len(latencies)})"
    )
    checked = run.audit
    print(
        f"  in timelines: {checked.unique} unique   lost {checked.lost}   duplicated {checked.duplicated}"
        f"   (targets: 0 and 0)   unread counts off by {checked.miscounted} in all"
    )
    load_name = f"{args.rate:.0f} msg/s for {args.duration:.0f} s"
    figure(f"webhook -> visible p99, {load_name}", pct(latencies, 99), unit="ms", target="< 500 ms at 500 msg/s")
    figure(f"lost, {load_name}", checked.lost, target="0")
    figure(f"duplicated, {load_name}", checked.duplicated, target="0")
    print(
        f"  reading them, idle: a timeline page of up to 200 items in p50 {pct(checked.page_ms, 50):.0f} ms   "
        f"p99 {pct(checked.page_ms, 99):.0f} ms   ({len(checked.page_ms)} pages)"
    )
    print(
        f"  consumer: {run.events:.0f} events in {run.busy_s:.1f} s = {run.events_per_s:.0f} events/s"
        "   (target p99 < 500 ms)"
    )
    figure("consumer events/s", run.events_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="customer messages per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring")
    parser.add_argument("--customers", type=int, default=200)
    add_pipeline_arguments(parser, settle=60.0)
    args = parser.parse_args()

    with bench_environment("conversation", mongo=True) as env:
        asyncio.run(seed_tenant(settings_from(env), TENANT))
        asyncio.run(measure(args, env))


if __name__ == "__main__":
    main()
