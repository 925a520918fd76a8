"""Benchmark ingest against a bare FastAPI endpoint with the same signed webhooks, in one run.

    uv run python -m bench.ingest [--duration 10] [--warmup 20] [--concurrency 32] [--rate 1000]

Starts a Kafka of its own (unless KAFKA_BOOTSTRAP_SERVERS is set), ingest and the bare endpoint as separate
uvicorn processes, then: a closed loop at fixed concurrency (throughput, and the ingest/bare ratio) and an open
loop at a fixed rate (latency at that rate). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.figures import figure
from bench.infra import REPO, BenchTenant, bench_environment, free_port, seed_tenant, settings_from, wait_healthy
from bench.loadgen import Result, build_request, closed_loop, open_loop

APP_ID, SECRET, NUMBER, WABA = "900100200300", "bench-app-secret", "900000000000001", "900000000000002"
TENANT = BenchTenant("bench", APP_ID, SECRET, NUMBER, WABA, "15550001234", "bench-access-token", "wf_bench")


def webhook(i: int) -> bytes:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001234", "phone_number_id": NUMBER},
                            "contacts": [{"profile": {"name": "Bench Customer"}, "wa_id": f"1555{i % 100000:07d}"}],
                            "messages": [
                                {
                                    "from": f"1555{i % 100000:07d}",
                                    "id": f"wamid.bench{uuid.uuid4().hex}",
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": f"message {i}"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signed_request(port: int) -> Callable[[int], bytes]:
    def make(i: int) -> bytes:
        body = webhook(i)
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return build_request(
            "127.0.0.1", port, f"/webhooks/whatsapp/{APP_ID}", body, {"X-Hub-Signature-256": signature}
        )

    return make


async def measure(args: argparse.Namespace, env: dict[str, str]) -> None:
    ingest_port, bare_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "waflow-ingest")], env=env | {"INGEST_PORT": str(ingest_port)}),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.ingest.bare:app",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            cwd=REPO,
        ),
    ]
    try:
        await asyncio.gather(wait_healthy(ingest_port), wait_healthy(bare_port, path="/docs"))
        targets = {"ingest": ingest_port, "bare FastAPI": bare_port}
        for port in targets.values():
            # Warm-up at full load: connections, lazy imports, and a just-started Kafka's JIT compiler, which
            # otherwise takes CPU from ingest for its first seconds (on 2 cores, a third of the measured rate).
            await closed_loop(
                "127.0.0.1", port, signed_request(port), concurrency=args.concurrency, duration_s=args.warmup
            )
        closed: dict[str, Result] = {}
        opened: dict[str, Result] = {}
        for name, port in targets.items():
            closed[name] = await closed_loop(
                "127.0.0.1",
                port,
                signed_request(port),
                concurrency=args.concurrency,
                duration_s=args.duration,
            )
        for name, port in targets.items():
            opened[name] = await open_loop(
                "127.0.0.1",
                port,
                signed_request(port),
                rate=args.rate,
                duration_s=args.duration,
                connections=args.concurrency,
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)

    print(f"\nclosed loop, concurrency {args.concurrency}, {args.duration:.0f} s each")
    for name, result in closed.items():
        print("  " + result.summary(name))
    ratio = closed["ingest"].requests_per_s / max(closed["bare FastAPI"].requests_per_s, 1e-9)
    print(f"  throughput ratio ingest / bare: {ratio:.2f}   (target >= 0.5)")
    figure(f"throughput ingest / bare FastAPI, concurrency {args.concurrency}", ratio, target=">= 0.5")
    figure(
        f"ingest webhooks/s, closed loop, concurrency {args.concurrency}", closed["ingest"].requests_per_s, unit="req/s"
    )
    print(f"\nopen loop at {args.rate:.0f} webhooks/s, {args.duration:.0f} s each (latency from when each was due)")
    for name, result in opened.items():
        print("  " + result.summary(name))
    print(f"  ingest p99 at {args.rate:.0f}/s: {opened['ingest'].pct(99):.1f} ms   (target < 50 ms)")
    figure(f"p99 at {args.rate:.0f} webhooks/s", opened["ingest"].pct(99), unit="ms", target="< 50 ms at 1000/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of full load before measuring")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()

    with bench_environment("ingest", mongo=False) as env:
        asyncio.run(seed_tenant(settings_from(env), TENANT))
        asyncio.run(measure(args, env))


if __name__ == "__main__":
    main()
