"""`make bench`: every benchmark in bench/ in a short form, then one table of their figures.

    uv run python -m bench [--only ingest,conversation,...] [--long]

Each benchmark runs as its own process with the arguments below (`--long`: their own defaults, the sizes their
READMEs report), against the Kafka and MongoDB-protocol server of KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI when
both are set, otherwise a Kafka and a database server it starts on free ports and wipes afterwards. Their output is
shown as it comes; the table at the end lists every figure they reported (bench.figures), its target, the result,
and the machine. A benchmark that fails shows as failed in the table: benchmarks never fail a build.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.figures import parse
from bench.infra import REPO, bench_environment


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    short: tuple[str, ...]  # arguments of the short form


BENCHMARKS = (
    Benchmark("ingest", "bench.ingest", ("--duration", "5", "--warmup", "5")),
    Benchmark(
        "conversation",
        "bench.conversation",
        ("--rate", "200", "--duration", "15", "--warmup", "5", "--customers", "50", "--settle", "30"),
    ),
    Benchmark("mongo_server", "bench.mongo_server", ("--documents", "5000", "--rounds", "20")),
    Benchmark(
        "contacts",
        "bench.contacts",
        ("--contacts", "10000", "--other-tenants", "3", "--other-size", "200", "--queries", "50", "--inbound", "500"),
    ),
    Benchmark("outbound", "bench.outbound.run", ("--requests", "2000", "--timeout", "180")),
    Benchmark(
        "scale",
        "bench.scale",
        (
            *("--rate", "100", "--steps", "3", "--duration", "8", "--warmup", "5", "--customers", "50"),
            *("--settle", "10", "--drain", "60", "--bare-duration", "5", "--rss-messages", "500"),
            *("--pages", "20", "--timelines", "20"),
        ),
    ),
)


def machine() -> str:
    cores = os.cpu_count() or 0
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cores} cores, {memory:.0f} GB, {platform.machine()}"


def run(benchmark: Benchmark, env: dict[str, str], long: bool) -> tuple[list[dict[str, str]], str]:
    """Runs one benchmark, echoing its output; returns its figures and how it ended."""
    command = [sys.executable, "-m", benchmark.module, *(() if long else benchmark.short)]
    print(f"\n=== {benchmark.name}: {' '.join(command[1:])}", flush=True)
    began = time.monotonic()
    figures: list[dict[str, str]] = []
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            found = parse(line)
            if found is None:
                print(line, end="", flush=True)
            else:
                figures.append(found)
    ended = f"exit {process.returncode}" if process.returncode else "ok"
    return figures, f"{ended} after {time.monotonic() - began:.0f} s"


def table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("figure", "target", "result", "machine")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--long", action="store_true", help="each benchmark's own default sizes")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only.split(",")]
    host = machine()
    rows: list[tuple[str, str, str, str]] = []
    with bench_environment("all", mongo=True) as env:
        for benchmark in chosen:
            figures, ended = run(benchmark, env, args.long)
            rows += [(f"{benchmark.name}: {f['name']}", f["target"], f["result"], host) for f in figures]
            if ended.startswith("exit") or not figures:
                rows.append((f"{benchmark.name}: (run)", "", f"failed: {ended}", host))
    print(f"\nbenchmarks ({'long' if args.long else 'short'} forms)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
