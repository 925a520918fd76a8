"""MongoDB through PyMongo's async API (AsyncMongoClient): one client per process, one database per service."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from waflow_common.settings import CommonSettings

Document = dict[str, Any]


def make_mongo_client(settings: CommonSettings) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
        appname="waflow",
    )


def service_database(
    client: AsyncMongoClient[Document], settings: CommonSettings, name: str
) -> AsyncDatabase[Document]:
    return client[settings.database(name)]


async def mongo_reachable(client: AsyncMongoClient[Document]) -> bool:
    try:
        await client.admin.command("ping")
    except Exception:
        return False
    return True
