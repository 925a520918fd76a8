"""The capacity model of docs/capacity.md: a deployment's peak load, divided by what one instance of each service
measured here (bench/), gives instances, partitions, Kafka brokers and MongoDB shards.

    uv run python -m bench.capacity                        # the table, from bench/capacity/inputs.json
    uv run python -m bench.capacity --figures bench.out    # with the per-instance figures of a `make bench` run
    uv run python -m bench.capacity --figures bench.out --write   # and store them, and the table in the docs

The model is arithmetic over named inputs, so that a changed figure or assumption changes the table the same
way every time; tests/test_capacity.py fails when docs/capacity.md shows another table than these inputs give.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from bench.figures import parse

INPUTS = Path(__file__).with_name("inputs.json")
DOC = Path(__file__).resolve().parents[2] / "docs" / "capacity.md"
BEGIN, END = "<!-- capacity:begin (bench/capacity writes this part) -->", "<!-- capacity:end -->"
DAY = 86_400

Inputs = dict[str, Any]


def load_inputs(path: Path = INPUTS) -> Inputs:
    inputs: Inputs = json.loads(path.read_text())
    return inputs


def _figures(lines: list[str]) -> Iterator[dict[str, str]]:
    """Each figure in a benchmark's output (its BENCH-FIGURE lines) or in `make bench`'s closing table, whose
    rows read `<benchmark>: <figure> | <target> | <result> | <machine>`."""
    for line in lines:
        found = parse(line)
        if found is not None:
            yield found
            continue
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) == 4 and ": " in cells[0] and cells[2]:
            yield {"name": cells[0].split(": ", 1)[1], "result": cells[2]}


def with_figures(inputs: Inputs, lines: list[str]) -> tuple[Inputs, list[str]]:
    """The inputs with each measured value replaced by the bench figure it names, where the lines have it (the
    first figure whose name starts with that text); and the names of those replaced."""
    figures = list(_figures(lines))
    out = json.loads(json.dumps(inputs))
    replaced = []
    for key, measured in out["measured"].items():
        for found in figures:
            if found["name"].startswith(measured["figure"]):
                number = re.match(r"[\d,]+(\.\d+)?", found["result"])
                if number:
                    measured["value"] = float(number.group(0).replace(",", ""))
                    measured["measured"] = f"bench figure '{found['name']}', {date.today().isoformat()}"
                    replaced.append(key)
                break
    return out, replaced


def _instances(work_per_s: float, per_instance: float, headroom: float) -> int:
    return max(2, math.ceil(work_per_s / (per_instance * headroom)))


def _partitions(needed: int, choices: list[int]) -> int:
    return next((c for c in choices if c >= needed), math.ceil(needed / choices[-1]) * choices[-1])


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,.0f} B"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def model(inputs: Inputs) -> list[str]:
    """The tables of docs/capacity.md, as markdown lines."""
    load, measured, kafka, topics, db = (inputs[k] for k in ("load", "measured", "kafka", "topics", "mongodb"))
    headroom = inputs["headroom"]
    rate = {k: float(v["value"]) for k, v in measured.items()}

    def traffic(messages_per_s: float) -> dict[str, float]:
        inbound = messages_per_s * load["inbound_share"]
        outbound = messages_per_s - inbound
        webhooks = inbound + outbound * load["statuses_per_outbound"]
        return {
            "inbound": inbound,
            "outbound": outbound,
            "whatsapp.webhooks.v1": webhooks,
            "wa.inbound.v1": webhooks,
            "contacts.v1": inbound * load["contact_changes_per_inbound"],
            "outbound.commands.v1": outbound,
            "outbound.results.v1": outbound,
            "conversation.v1": inbound * load["read_receipts_per_inbound"],
        }

    peak = traffic(load["peak_messages_per_s"])
    average = traffic(load["messages_per_day"] / DAY)

    # Services: the work each one's consumers (ingest: its endpoint) do at the peak, per measured instance.
    services = {
        "ingest": (peak["whatsapp.webhooks.v1"], rate["ingest_webhooks_per_s"], "webhook deliveries", ()),
        "conversation": (
            peak["wa.inbound.v1"] + peak["contacts.v1"] + peak["outbound.results.v1"],
            rate["conversation_events_per_s"],
            "events (inbound, contacts, results)",
            ("wa.inbound.v1", "contacts.v1", "outbound.results.v1"),
        ),
        "contacts": (
            peak["inbound"],
            rate["contacts_events_per_s"],
            "customer messages",
            ("wa.inbound.v1",),
        ),
        "outbound": (
            peak["outbound"],
            rate["outbound_sends_per_s"],
            "sends to WhatsApp",
            ("outbound.commands.v1", "wa.inbound.v1", "contacts.v1", "conversation.v1"),
        ),
    }
    instances = {name: _instances(work, per, headroom) for name, (work, per, _, _) in services.items()}
    lines = [
        f"Peak: {_n(load['peak_messages_per_s'])} messages/s ({_n(peak['inbound'])} in, "
        f"{_n(peak['outbound'])} out), {_n(peak['whatsapp.webhooks.v1'])} webhook deliveries/s; average "
        f"{_n(load['messages_per_day'] / DAY)} messages/s over {_n(load['messages_per_day'])} a day, "
        f"{_n(load['tenants'])} tenants. Instances are sized to run at {headroom:.0%} of the measured rate "
        "at the peak (at least 2 each, for availability).",
        "",
    ]
    lines += _table(
        ("service", "work at peak", "per instance (measured)", "instances at peak"),
        [
            (name, f"{_n(work)} {what}/s", f"{_n(per)}/s", _n(instances[name]))
            for name, (work, per, what, _) in services.items()
        ],
    )

    # Topics: enough partitions for the largest consumer group reading them, and for records per partition.
    readers: dict[str, int] = {}
    for name, (_, _, _, consumed) in services.items():
        for topic in consumed:
            readers[topic] = max(readers.get(topic, 0), instances[name])
    contacts_total = load["tenants"] * db["contacts_per_tenant"]
    rows, write_bytes, stored, replicas = [], 0.0, 0.0, 0
    for topic, spec in topics.items():
        needed = max(readers.get(topic, 1), math.ceil(peak[topic] / kafka["partition_records_per_s"]))
        partitions = _partitions(needed, kafka["partition_choices"])
        mb_per_s = peak[topic] * spec["bytes"] / 1e6
        if spec["retention_days"]:
            kept = average[topic] * spec["bytes"] * DAY * spec["retention_days"]
            retention = f"{spec['retention_days']} days"
        else:  # compacted: the newest record of every key, for ever
            kept = contacts_total * spec["bytes"]
            retention = "compacted"
        write_bytes += peak[topic] * spec["bytes"] * kafka["replication_factor"]
        stored += kept * kafka["replication_factor"]
        replicas += 2 * partitions * kafka["replication_factor"]  # and its .dlq beside it
        rows.append((topic, _n(peak[topic]), _n(partitions), f"{mb_per_s:,.1f}", retention, _size(kept)))
    lines += [
        "",
        *_table(("topic", "records/s at peak", "partitions", "MB/s at peak", "retention", "kept (1 copy)"), rows),
    ]
    brokers = max(
        3,
        math.ceil(write_bytes / 1e6 / kafka["broker_write_mb_per_s"]),
        math.ceil(stored / (kafka["broker_disk_tb"] * 1e12 * 0.7)),
        math.ceil(replicas / kafka["broker_partition_replicas"]),
    )
    lines += [
        "",
        f"Kafka: {brokers} brokers (replication factor {kafka['replication_factor']}): "
        f"{write_bytes / 1e6:,.0f} MB/s written at the peak with replicas (a broker taken at "
        f"{kafka['broker_write_mb_per_s']} MB/s), {_size(stored)} kept with replicas (disks of "
        f"{kafka['broker_disk_tb']} TB filled to 70 %), {_n(replicas)} partition replicas with the .dlq topics "
        f"(at most {_n(kafka['broker_partition_replicas'])} a broker).",
    ]

    # MongoDB: writes at the peak, data kept, and what must stay in memory.
    writes = (
        peak["inbound"] * db["writes_per_inbound"]
        + peak["outbound"] * db["writes_per_outbound"]
        + peak["outbound"] * load["statuses_per_outbound"] * db["writes_per_status"]
    )
    messages_kept = load["messages_per_day"] * db["message_retention_days"] * db["message_bytes"]
    chats = contacts_total * db["chat_bytes"]
    contacts = contacts_total * db["contact_bytes"]
    data = (messages_kept + chats + contacts) * (1 + db["index_fraction"])
    chats_today = load["messages_per_day"] / load["messages_per_chat_day"]
    hot = (chats_today * (db["chat_bytes"] + db["contact_bytes"]) + load["messages_per_day"] * db["message_bytes"]) * (
        1 + db["index_fraction"]
    )
    shards = max(
        1,
        math.ceil(writes / db["shard_writes_per_s"]),
        math.ceil(hot / (db["shard_ram_gb"] * 1e9 * db["cache_fraction"])),
        math.ceil(data / (db["shard_disk_tb"] * 1e12 * 0.7)),
    )
    lines += [
        "",
        *_table(
            ("MongoDB", "figure"),
            [
                ("writes/s at peak", _n(writes)),
                (
                    "messages kept",
                    f"{_n(load['messages_per_day'] * db['message_retention_days'])} "
                    f"({db['message_retention_days']} days), {_size(messages_kept)}",
                ),
                ("chats and contacts", f"{_n(contacts_total)} each, {_size(chats + contacts)}"),
                ("data with indexes", _size(data)),
                ("working set (a day's chats, contacts and messages, with their index share)", _size(hot)),
                ("shards (replica sets of 3)", _n(shards)),
            ],
        ),
    ]
    return lines


def render_doc(doc: str, lines: list[str]) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + "\n".join(lines) + "\n" + doc[end:]
