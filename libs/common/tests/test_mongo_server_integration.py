"""What the services rely on from the MongoDB-protocol server, checked against the real one.

A find of `{_id: {$in: [...]}}` answers exactly the listed documents, and an update command reports each upsert
at its statement's position. (MongoDB's guarantees under concurrency are in tests/conformance.)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def messages(settings: CommonSettings) -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    client = make_mongo_client(settings)
    collection = service_database(client, settings, f"waflow_server_test_{uuid.uuid4().hex[:8]}")["messages"]
    await collection.insert_many(
        [{"_id": f"t1:m{n}", "n": n, "chat_id": f"c{n % 3}"} for n in range(1_200)]
        + [{"_id": n, "n": -n} for n in range(3)]  # ids of other types live beside them
    )
    yield collection
    await client.close()


async def ids(collection: AsyncCollection[dict[str, Any]], query: dict[str, Any]) -> list[Any]:
    return [doc["_id"] async for doc in collection.find(query).sort("n", 1)]


async def test_a_find_by_id_in_answers_exactly_the_listed_documents(
    messages: AsyncCollection[dict[str, Any]],
) -> None:
    wanted = [f"t1:m{n}" for n in (7, 3, 1_100, 5)]
    assert await ids(messages, {"_id": {"$in": wanted}}) == ["t1:m3", "t1:m5", "t1:m7", "t1:m1100"]
    assert await ids(messages, {"_id": {"$in": [*wanted, "t1:absent", 1, None]}}) == [
        1,
        "t1:m3",
        "t1:m5",
        "t1:m7",
        "t1:m1100",
    ]
    assert await ids(messages, {"_id": {"$in": []}}) == []
    assert await ids(messages, {"_id": {"$in": wanted}, "chat_id": "c1"}) == ["t1:m7"]
    assert await ids(messages, {"_id": {"$in": wanted, "$ne": "t1:m5"}}) == ["t1:m3", "t1:m7", "t1:m1100"]
    many = [f"t1:m{n}" for n in range(1_100)]  # more ids than one read takes
    assert len(await ids(messages, {"_id": {"$in": many}})) == 1_100


async def test_a_bulk_of_updates_changes_each_document_once(messages: AsyncCollection[dict[str, Any]]) -> None:
    result = await messages.bulk_write(
        [UpdateOne({"_id": f"t1:m{n}"}, {"$inc": {"n": 10_000}, "$set": {"seen": True}}) for n in range(200)],
        ordered=False,
    )
    assert result.matched_count == 200
    changed = await messages.find({"_id": {"$in": [f"t1:m{n}" for n in range(200)]}}).to_list()
    assert sorted(doc["n"] for doc in changed) == [n + 10_000 for n in range(200)]
    assert all(doc["seen"] for doc in changed)


async def test_a_bulk_reports_each_upsert_at_its_operations_position(
    messages: AsyncCollection[dict[str, Any]],
) -> None:
    result = await messages.bulk_write(
        [
            UpdateOne({"_id": "t1:m1"}, {"$set": {"seen": True}}, upsert=True),  # matches
            UpdateOne({"_id": "t1:new-a"}, {"$set": {"seen": True}}, upsert=True),  # upserts
            UpdateOne({"_id": "t1:m2"}, {"$set": {"seen": True}}, upsert=True),  # matches
            UpdateOne({"_id": "t1:new-b"}, {"$set": {"seen": True}}, upsert=True),  # upserts
        ],
        ordered=False,
    )
    assert result.upserted_ids == {1: "t1:new-a", 3: "t1:new-b"}
    assert result.matched_count == 2
