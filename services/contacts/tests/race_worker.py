"""One contacts instance for the two-instance race test, as its own OS process.

Builds the service's stack (its own AsyncMongoClient, Kafka producer, outbox relay, contact book and lists),
says "ready", waits for "go" on stdin, then hammers the contacts it is given; it exits once everything it (or
anyone) parked for them is relayed. Settings come from the environment, the workload from argv (JSON).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from waflow_contacts import domain
from waflow_contacts.book import Cause, ContactBook
from waflow_contacts.domain import Identity
from waflow_contacts.lists import StaticLists
from waflow_contacts.main import ContactsSettings, build_core

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TAGS = 6
EDITS = 5
MESSAGES = 5


async def hammer(book: ContactBook, lists: StaticLists, work: dict[str, Any], contact: dict[str, str]) -> None:
    tenant, me, cid = work["tenant"], work["worker"], contact["contact_id"]
    cause = Cause(f"race-{me}")

    async def fields() -> None:
        for k in range(EDITS):
            await book.edit(tenant, cid, {"fields": {f"f{me}": f"v{k}"}}, cause)

    async def messages() -> None:
        for k in range(MESSAGES):
            at = BASE + timedelta(seconds=k)
            await book.record_message(tenant, Identity(contact["wa_id"]), f"P{k}", at, cause)

    async def delete() -> None:
        await asyncio.sleep(random.uniform(0, 0.2))
        await book.change(tenant, cid, domain.blacklist("race", book.now()), cause)

    ops = [
        *(book.change(tenant, cid, domain.add_tags([f"w{me}-{i}"]), cause) for i in range(TAGS)),
        *(book.change(tenant, cid, domain.remove_tag(f"pre-{2 * i + me}"), cause) for i in range(TAGS // 2)),
        fields(),
        lists.set_membership(tenant, work["lists"][me], [cid], member=True, cause=cause),
    ]
    if me == 1:
        ops.append(messages())
    if me == 0 and cid in work["doomed"]:
        ops.append(delete())
    await asyncio.gather(*ops)


async def main() -> None:
    work = json.loads(sys.argv[1])
    settings = ContactsSettings(contacts_outbox_rescan_seconds=1.0, contacts_outbox_orphan_seconds=1.0)
    core = build_core(settings, clock=lambda: datetime.now(UTC), client_id=f"contacts-race-{work['worker']}")
    await core.broker.start()
    core.relay.start()
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(hammer(core.book, core.lists, work, c) for c in work["contacts"]))
        parked = {"tenant_id": work["tenant"], "outbox.0": {"$exists": True}}
        for _ in range(300):
            if await core.repository.contacts.count_documents(parked) == 0:
                break
            await asyncio.sleep(0.1)
        print("done", flush=True)
    finally:
        await core.relay.stop()
        await core.broker.stop()
        await core.mongo.close()


if __name__ == "__main__":
    asyncio.run(main())
