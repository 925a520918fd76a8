"""Links between a customer's ids, on the real MongoDB-protocol server: one customer stays one record."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymongo.asynchronous.collection import AsyncCollection
from waflow_common.customers import CustomerLinks
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.settings import CommonSettings

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def links(settings: CommonSettings) -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    client = make_mongo_client(settings)
    yield service_database(client, settings, f"waflow_links_test_{uuid.uuid4().hex[:8]}")["customer_links"]
    await client.close()


async def test_a_customer_who_wrote_by_phone_keeps_the_number_as_key_when_a_bsuid_appears(
    links: AsyncCollection[dict[str, Any]],
) -> None:
    book = CustomerLinks(links)
    assert await book.resolve("t1", "5215512345678") == "5215512345678"
    assert await book.resolve("t1", "5215512345678", "MX.aaa") == "5215512345678"
    # Later only the BSUID, or the number's other form (in a fresh process: nothing kept in memory).
    again = CustomerLinks(links)
    assert await again.resolve("t1", "", "MX.aaa") == "5215512345678"
    assert await again.resolve("t1", "525512345678") == "5215512345678"
    # Another tenant's customer with the same ids is someone else.
    assert await again.resolve("t2", "", "MX.aaa") == "MX.aaa"


async def test_two_bsuid_only_customers_are_two_customers(links: AsyncCollection[dict[str, Any]]) -> None:
    book = CustomerLinks(links)
    first, second = await book.resolve("t1", "", "US.1"), await book.resolve("t1", "", "US.2")
    assert (first, second) == ("US.1", "US.2")
    # A BSUID-first customer whose number appears later keeps the BSUID as key.
    assert await book.resolve("t1", "15551230000", "US.1") == "US.1"
    assert await CustomerLinks(links).resolve("t1", "15551230000") == "US.1"


async def test_racing_instances_agree_on_one_customer(links: AsyncCollection[dict[str, Any]]) -> None:
    books = [CustomerLinks(links) for _ in range(6)]
    wa_id = "551198" + str(uuid.uuid4().int)[:7]  # a mobile: with and without its ninth digit
    answers = await asyncio.gather(
        *(b.resolve("t3", wa_id if n % 2 else wa_id[:4] + wa_id[5:]) for n, b in enumerate(books))
    )
    assert len(set(answers)) == 1


async def test_a_bsuid_racing_its_number_joins_the_customer_of_the_number(
    links: AsyncCollection[dict[str, Any]],
) -> None:
    for round_ in range(5):
        wa_id, user_id = "3461" + str(uuid.uuid4().int)[:7], f"ES.race{round_}{uuid.uuid4().hex[:6]}"
        books = [CustomerLinks(links) for _ in range(4)]
        answers = await asyncio.gather(
            *(b.resolve("t5", wa_id, user_id if n % 2 else None) for n, b in enumerate(books))
        )
        assert len(set(answers)) == 1, answers
        assert await CustomerLinks(links).resolve("t5", "", user_id) == answers[0]


async def test_records_made_before_links_are_found_by_any_form(links: AsyncCollection[dict[str, Any]]) -> None:
    existing = {"525512340000"}  # a record keyed by the form Meta sent, made before links existed

    async def known(identity: str) -> bool:
        return identity in existing

    book = CustomerLinks(links)
    assert await book.resolve("t4", "5215512340000", known=known) == "525512340000"
    assert await book.find("t4", ("5215512340000",)) == "525512340000"
    assert await book.find("t4", ("5215599999999",)) is None
