"""What waflow relies on from its MongoDB-protocol server, proven on whichever server this run uses.

Locally that is SecantusDB (deploy/local/infra.sh); with a Docker engine it is mongo:7 (testcontainers); in
compose, MongoDB 7 as a replica set. Every instance of every service writes the same documents at once, so the
server must give MongoDB's own guarantees: concurrent updates from several processes lose nothing, a claim by
`findOneAndUpdate` goes to exactly one claimant, unique indexes answer 11000 on insert, update and upsert, a
filter and sort on indexed fields is answered from the index, update pipelines see `$$NOW`, and TTL indexes
remove expired documents. The concurrency checks run in separate OS processes, as the services do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings

pytestmark = pytest.mark.integration

PROCESSES = 4
OPERATIONS = 100

# One worker process: connects on its own and runs one kind of operation OPERATIONS times, as fast as it can.
WORKER = """
import json, sys
from pymongo import MongoClient, ReturnDocument
uri, db, kind, me, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
client = MongoClient(uri, serverSelectionTimeoutMS=10000)
coll = client[db]["work"]
claimed = []
for i in range(n):
    if kind == "inc":
        coll.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
    elif kind == "push":
        coll.update_one({"_id": "lists"}, {"$push": {"pushed": f"{me}:{i}"}, "$addToSet": {"added": f"{me}:{i}"}})
    elif kind == "claim":
        job = coll.find_one_and_update(
            {"kind": "job", "owner": None}, {"$set": {"owner": me}}, return_document=ReturnDocument.AFTER
        )
        if job is None:
            break
        claimed.append(job["_id"])
print(json.dumps(claimed))
"""


@pytest_asyncio.fixture(loop_scope="session")
async def db(settings: CommonSettings) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client = make_mongo_client(settings)
    database = service_database(client, settings, f"waflow_conformance_{uuid.uuid4().hex[:8]}")
    yield database
    await client.drop_database(database.name)
    await client.close()


async def run_workers(settings: CommonSettings, db_name: str, kind: str, count: int = PROCESSES) -> list[list[str]]:
    """Starts `count` worker processes at once and returns what each claimed."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            settings.mongodb_uri,
            db_name,
            kind,
            f"w{n}",
            str(OPERATIONS),
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(count)
    ]
    outputs = [await proc.communicate() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    return [json.loads(out) for out, _ in outputs]


async def test_concurrent_inc_from_several_processes_loses_nothing(
    db: AsyncDatabase[dict[str, Any]], settings: CommonSettings
) -> None:
    await db["work"].insert_one({"_id": "counter", "n": 0})
    await run_workers(settings, db.name, "inc")
    doc = await db["work"].find_one({"_id": "counter"})
    assert doc is not None
    assert doc["n"] == PROCESSES * OPERATIONS


async def test_concurrent_push_and_add_to_set_lose_nothing(
    db: AsyncDatabase[dict[str, Any]], settings: CommonSettings
) -> None:
    await db["work"].insert_one({"_id": "lists", "pushed": [], "added": []})
    await run_workers(settings, db.name, "push")
    doc = await db["work"].find_one({"_id": "lists"})
    assert doc is not None
    expected = {f"w{p}:{i}" for p in range(PROCESSES) for i in range(OPERATIONS)}
    assert sorted(doc["pushed"]) == sorted(expected)  # each once
    assert sorted(doc["added"]) == sorted(expected)


async def test_find_one_and_update_claims_each_job_exactly_once(
    db: AsyncDatabase[dict[str, Any]], settings: CommonSettings
) -> None:
    await db["work"].insert_many([{"_id": f"job{n}", "kind": "job", "owner": None} for n in range(20)])
    claims = await run_workers(settings, db.name, "claim", count=8)
    every = [job for claimed in claims for job in claimed]
    assert sorted(every) == sorted(f"job{n}" for n in range(20))


async def test_a_unique_index_answers_11000_on_insert_update_and_upsert(db: AsyncDatabase[dict[str, Any]]) -> None:
    coll = db["unique"]
    await coll.create_index([("tenant_id", ASCENDING), ("wamid", ASCENDING)], unique=True)
    await coll.insert_one({"tenant_id": "t", "wamid": "a"})
    await coll.insert_one({"tenant_id": "t", "wamid": "b"})
    await coll.insert_one({"tenant_id": "u", "wamid": "a"})  # another tenant's same wamid is another key
    with pytest.raises(DuplicateKeyError) as inserted:
        await coll.insert_one({"tenant_id": "t", "wamid": "a"})
    with pytest.raises(DuplicateKeyError) as updated:
        await coll.update_one({"tenant_id": "t", "wamid": "b"}, {"$set": {"wamid": "a"}})
    with pytest.raises(DuplicateKeyError) as upserted:  # a lease's conditional upsert while another holds it
        await coll.update_one({"tenant_id": "t", "wamid": "a", "owner": "me"}, {"$set": {"x": 1}}, upsert=True)
    assert inserted.value.code == updated.value.code == upserted.value.code == 11000
    assert await coll.count_documents({"tenant_id": "t"}) == 2


async def test_concurrent_upserts_of_one_key_create_one_document(db: AsyncDatabase[dict[str, Any]]) -> None:
    coll = db["upserts"]

    async def upsert(n: int) -> None:
        try:
            await coll.update_one({"_id": "lease"}, {"$setOnInsert": {"first": n}, "$inc": {"seen": 1}}, upsert=True)
        except DuplicateKeyError:
            await coll.update_one({"_id": "lease"}, {"$inc": {"seen": 1}})

    await asyncio.gather(*(upsert(n) for n in range(40)))
    assert await coll.count_documents({}) == 1
    doc = await coll.find_one({"_id": "lease"})
    assert doc is not None
    assert doc["seen"] == 40


def stages(plan: Any) -> list[str]:
    """Every stage name in an explain plan, depth first."""
    found: list[str] = []
    if isinstance(plan, dict):
        if "stage" in plan:
            found.append(str(plan["stage"]))
        for value in plan.values():
            found.extend(stages(value))
    elif isinstance(plan, list):
        for value in plan:
            found.extend(stages(value))
    return found


async def test_filter_and_sort_on_indexed_fields_use_the_index(db: AsyncDatabase[dict[str, Any]]) -> None:
    coll = db["chats"]
    await coll.create_index([("tenant_id", ASCENDING), ("last_activity_at", DESCENDING), ("_id", DESCENDING)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    await coll.insert_many(
        [
            {
                "_id": f"t{n % 4}:c{n}",
                "tenant_id": f"t{n % 4}",
                "last_activity_at": start + timedelta(seconds=n),
            }
            for n in range(2_000)
        ]
    )
    page = coll.find({"tenant_id": "t1"}).sort([("last_activity_at", DESCENDING), ("_id", DESCENDING)]).limit(50)
    plan = stages((await page.explain())["queryPlanner"]["winningPlan"])
    assert any("IXSCAN" in stage for stage in plan), plan
    assert "COLLSCAN" not in plan, plan
    docs = await page.to_list()
    assert [d["last_activity_at"] for d in docs] == sorted((d["last_activity_at"] for d in docs), reverse=True)
    assert len(docs) == 50
    assert all(d["tenant_id"] == "t1" for d in docs)


async def test_a_prefix_range_on_a_multikey_field_uses_the_index(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Contacts' search: normalised keys in an array, a prefix as a range on one element."""
    coll = db["contacts"]
    await coll.create_index([("tenant_id", ASCENDING), ("search_keys", ASCENDING)])
    await coll.insert_many(
        [
            {"_id": f"t{n % 4}:c{n}", "tenant_id": f"t{n % 4}", "search_keys": [f"name{n}", f"3933{n:06d}"]}
            for n in range(2_000)
        ]
    )
    # A prefix as a range on one element of a multikey field: without $elemMatch, MongoDB lets one element
    # satisfy $gte and another $lt, which matches every document here.
    prefix = coll.find({"tenant_id": "t1", "search_keys": {"$elemMatch": {"$gte": "name17", "$lt": "name18"}}})
    expected = {f"t1:c{n}" for n in range(2_000) if n % 4 == 1 and str(n).startswith("17")}
    assert {d["_id"] for d in await prefix.to_list()} == expected

    plan = stages((await prefix.explain())["queryPlanner"]["winningPlan"])
    info = await db.client.admin.command("buildInfo")
    if str(info.get("secantusVersion", "")).startswith("0.7."):
        pytest.skip("secantusd-py 0.7 answers $elemMatch by reading the collection: correct, not indexed")
    assert any("IXSCAN" in stage for stage in plan), plan
    assert "COLLSCAN" not in plan, plan


async def test_update_pipelines_see_the_servers_clock(db: AsyncDatabase[dict[str, Any]]) -> None:
    """A token bucket kept in the database reserves slots by the server's `$$NOW`, one clock for every instance.

    In epoch milliseconds: secantusd-rs 0.5.3 refuses `$add` of a date and a number, MongoDB takes both forms."""
    coll = db["buckets"]
    before = (datetime.now(UTC) - timedelta(seconds=5)).timestamp() * 1000
    now = {"$toLong": "$$NOW"}
    slots = []
    for _ in range(3):
        doc = await coll.find_one_and_update(
            {"_id": "number"},
            [{"$set": {"tat": {"$add": [{"$max": [{"$ifNull": ["$tat", now]}, now]}, 1000]}}}],
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        slots.append(doc["tat"])
    assert slots[0] > before
    assert [b - a for a, b in itertools.pairwise(slots)] == [1000, 1000]


async def test_a_ttl_index_removes_expired_documents(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Held items and journals expire through TTL indexes. MongoDB's TTL monitor runs every 60 seconds."""
    coll = db["held"]
    await coll.create_index("expires_at", expireAfterSeconds=0)
    now = datetime.now(UTC)
    await coll.insert_many(
        [
            {"_id": "old", "expires_at": now - timedelta(minutes=1)},
            {"_id": "new", "expires_at": now + timedelta(days=1)},
        ]
    )
    for _ in range(130):
        if await coll.count_documents({"_id": "old"}) == 0:
            break
        await asyncio.sleep(1)
    assert [d["_id"] async for d in coll.find()] == ["new"]
