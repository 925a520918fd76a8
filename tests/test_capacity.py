"""docs/capacity.md shows the tables its inputs give, and a bench run's figures move them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts beside the packages (run as `python -m bench...` from the repository's root).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.capacity import BEGIN, DOC, END, load_inputs, model, with_figures
from bench.figures import MARKER


def instances(lines: list[str], service: str) -> int:
    row = next(line for line in lines if line.startswith(f"| {service} |"))
    return int(row.rstrip(" |").rsplit("|", 1)[1].replace(",", ""))


def partitions(lines: list[str]) -> dict[str, int]:
    rows = (line.split("|") for line in lines if re.match(r"\| [a-z.]+\.v1 \|", line))
    return {cells[1].strip(): int(cells[3].strip().replace(",", "")) for cells in rows}


def test_the_page_shows_the_tables_of_the_committed_inputs() -> None:
    doc = DOC.read_text()
    shown = doc[doc.index(BEGIN) + len(BEGIN) : doc.index(END)].strip("\n").splitlines()
    assert shown == model(load_inputs()), "run `uv run python -m bench.capacity --write` (or fix the inputs)"


def test_every_topic_has_a_partition_for_each_instance_of_its_largest_reader() -> None:
    lines = model(load_inputs())
    counts = partitions(lines)
    assert counts["wa.inbound.v1"] >= max(instances(lines, s) for s in ("conversation", "contacts", "outbound"))
    assert counts["outbound.commands.v1"] >= instances(lines, "outbound")


def test_a_bench_run_replaces_the_measured_figures_it_has() -> None:
    inputs = load_inputs()
    before = model(inputs)
    ingest = inputs["measured"]["ingest_webhooks_per_s"]
    bench_output = [
        "some other output",
        MARKER + '{"name": "' + ingest["figure"] + ', concurrency 64", "result": "'
        f"{ingest['value'] * 2:,.1f}" + ' req/s", "target": ""}',
        MARKER + '{"name": "an unrelated figure", "result": "7 ms", "target": ""}',
        # a row of `make bench`'s table
        "contacts: " + inputs["measured"]["contacts_events_per_s"]["figure"] + ", 5000 events |  | 1,234.5 | 2 cores",
    ]
    updated, replaced = with_figures(inputs, bench_output)
    assert replaced == ["ingest_webhooks_per_s", "contacts_events_per_s"]
    assert updated["measured"]["contacts_events_per_s"]["value"] == 1234.5
    assert updated["measured"]["ingest_webhooks_per_s"]["value"] == pytest.approx(ingest["value"] * 2, abs=0.1)
    after = model(updated)
    assert instances(after, "ingest") < instances(before, "ingest")
    assert instances(after, "conversation") == instances(before, "conversation")
