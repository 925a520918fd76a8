"""Listing, search and filters answered by the database: stable order, cursors, tags, lists, deleted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from waflow_common.events.contacts import ContactListRef, ContactSnapshot
from waflow_common.mongo import make_mongo_client
from waflow_common.settings import CommonSettings
from waflow_contacts import domain
from waflow_contacts.book import Cause, ContactBook
from waflow_contacts.repository import ContactRepository
from waflow_contacts.search import ContactQuery
from waflow_testing.fixtures import isolated_env, settings_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CAUSE = Cause("test")


def contact(wa_id: str, **values: object) -> ContactSnapshot:
    base = domain.new_contact(domain.contact_id_for("t", wa_id), domain.Identity(wa_id), NOW)
    new = domain.advance(base, base.model_copy(update=values), NOW)
    assert new is not None
    return new


@pytest_asyncio.fixture(loop_scope="session")
async def book(settings_env: dict[str, str]) -> AsyncIterator[tuple[ContactBook, ContactRepository]]:
    settings = settings_for(CommonSettings, isolated_env(settings_env, "search"))
    client = make_mongo_client(settings)
    repository = ContactRepository(client[settings.database("waflow_contacts")])
    await repository.ensure_indexes()
    try:
        yield ContactBook(repository, lambda *_: None, lambda: NOW), repository
    finally:
        await client.drop_database(settings.database("waflow_contacts"))
        await client.close()


async def ids(book: ContactBook, query: ContactQuery, *, limit: int = 100, cursor: str | None = None) -> list[str]:
    page, _ = await book.search("t", query, limit=limit, cursor=cursor)
    return [json.loads(item)["contact_id"] for item in page]


async def test_pages_in_a_stable_order_and_filters(book: tuple[ContactBook, ContactRepository]) -> None:
    contacts, repository = book
    people = [
        contact(f"3461234{i:04d}", name=f"Person {i:03d}", profile_name=f"Pro {i}", tags=["even"] if i % 2 == 0 else [])
        for i in range(50)
    ]
    await repository.insert_many("t", people)
    await repository.insert_many("other", [contact("34612340000", name="Person 000")])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await contacts.search("t", ContactQuery(), limit=7, cursor=cursor)
        seen += [json.loads(item)["contact_id"] for item in page]
        if cursor is None:
            break
    assert seen == [p.contact_id for p in people]
    assert await ids(contacts, ContactQuery(tags=("even",))) == [p.contact_id for p in people[::2]]
    assert await ids(contacts, ContactQuery(search="person 01")) == [p.contact_id for p in people[10:20]]
    assert await ids(contacts, ContactQuery(search="+34 612 340 049"), limit=5) == [people[49].contact_id]
    assert await ids(contacts, ContactQuery(search="pro 49"), limit=5) == [people[49].contact_id]
    _, cursor = await contacts.search("t", ContactQuery(search="person 04"), limit=2, cursor=None)
    assert cursor is not None
    assert await ids(contacts, ContactQuery(search="person 04"), limit=3, cursor=cursor) == [
        p.contact_id for p in people[42:45]
    ]
    # A name and a number at once: "049" the name's word, "49" (no trunk zero) anywhere in a number.
    assert await ids(contacts, ContactQuery(search="049")) == [people[49].contact_id]

    renamed = await contacts.change("t", people[0].contact_id, domain.edit({"name": "Zed"}, {}), CAUSE)
    assert (await ids(contacts, ContactQuery()))[-1] == people[0].contact_id
    gone = await contacts.change("t", renamed.contact.contact_id, domain.blacklist("a", NOW), CAUSE)
    assert await ids(contacts, ContactQuery(deleted=True)) == [gone.contact.contact_id]
    assert await contacts.tag_counts("t") == {"even": 24}


async def test_a_tag_or_list_pages_through_its_members_in_order(book: tuple[ContactBook, ContactRepository]) -> None:
    contacts, repository = book
    ref = ContactListRef(list_id="l_1", name="L")
    people = [
        contact(
            f"3471234{i:04d}",
            name=f"P {i:03d}",
            tags=["rare"] if i in (5, 17, 33) else [],
            lists=[ref] if i > 30 else [],
        )
        for i in range(40)
    ]
    await repository.insert_many("t2", people)
    first, cursor = await contacts.search("t2", ContactQuery(tags=("rare",)), limit=2, cursor=None)
    assert [json.loads(i)["contact_id"] for i in first] == [people[5].contact_id, people[17].contact_id]
    rest, end = await contacts.search("t2", ContactQuery(tags=("rare",)), limit=2, cursor=cursor)
    assert ([json.loads(i)["contact_id"] for i in rest], end) == ([people[33].contact_id], None)
    await contacts.change("t2", people[17].contact_id, domain.remove_tag("rare"), CAUSE)
    page, _ = await contacts.search("t2", ContactQuery(tags=("rare",)), limit=5, cursor=None)
    assert [json.loads(i)["contact_id"] for i in page] == [people[5].contact_id, people[33].contact_id]
    members, _ = await contacts.search("t2", ContactQuery(list_id="l_1", tags=("rare",)), limit=5, cursor=None)
    assert [json.loads(i)["contact_id"] for i in members] == [people[33].contact_id]
    assert await repository.member_count("t2", "l_1") == 9
