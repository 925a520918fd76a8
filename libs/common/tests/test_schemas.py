"""What counts as a breaking change to an event's schema (waflow_common.events.schemas)."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field
from waflow_common.events.schemas import breaking_changes, event_schemas


class Inner(BaseModel):
    code: int
    note: str | None = None


class Old(BaseModel):
    wamid: str
    status: Literal["sent", "read"]
    count: int = 0
    inner: Inner | None = None
    tags: list[str] = Field(default_factory=list)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="validation")


def test_an_unchanged_schema_has_no_breaking_change() -> None:
    assert breaking_changes(_schema(Old), _schema(Old)) == []


def test_optional_fields_and_annotations_may_be_added() -> None:
    class InnerMore(BaseModel):
        code: int = Field(description="Meta's code")
        note: str | None = None
        extra: str | None = None

    class New(BaseModel):
        wamid: str = Field(title="The message id", description="as Meta gives it")
        status: Literal["sent", "read"]
        count: int = 5
        inner: InnerMore | None = None
        tags: list[str] = Field(default_factory=list)
        added: str | None = None

    assert breaking_changes(_schema(Old), _schema(New)) == []


class Removed(BaseModel):
    status: Literal["sent", "read"]
    count: int = 0
    inner: Inner | None = None
    tags: list[str] = Field(default_factory=list)


class LooserRequired(BaseModel):
    wamid: str | None = None
    status: Literal["sent", "read"]
    count: int = 0
    inner: Inner | None = None
    tags: list[str] = Field(default_factory=list)


class NowRequired(BaseModel):
    wamid: str
    status: Literal["sent", "read"]
    count: int
    inner: Inner | None = None
    tags: list[str] = Field(default_factory=list)


class AddedRequired(Old):
    must: str


class Retyped(BaseModel):
    wamid: str
    status: Literal["sent", "read"]
    count: str = "0"
    inner: Inner | None = None
    tags: list[str] = Field(default_factory=list)


class Widened(BaseModel):
    wamid: str
    status: Literal["sent", "read", "played"]
    count: int = 0
    inner: Inner | None = None
    tags: list[str] = Field(default_factory=list)


class InnerRetyped(BaseModel):
    code: str
    note: str | None = None


class NestedBreak(BaseModel):
    wamid: str
    status: Literal["sent", "read"]
    count: int = 0
    inner: InnerRetyped | None = None
    tags: list[str] = Field(default_factory=list)


class ItemsRetyped(BaseModel):
    wamid: str
    status: Literal["sent", "read"]
    count: int = 0
    inner: Inner | None = None
    tags: list[int] = Field(default_factory=list)


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (Removed, "wamid: removed"),
        (LooserRequired, "wamid: no longer required"),
        (NowRequired, "count: now required"),
        (AddedRequired, "must: added as required"),
        (Retyped, "count:"),
        (Widened, "status:"),
        (NestedBreak, "inner[anyOf 0].code:"),
        (ItemsRetyped, "tags[]:"),
    ],
)
def test_what_breaks_a_consumer_of_the_old_schema_is_found(new: type[BaseModel], expected: str) -> None:
    found = breaking_changes(_schema(Old), _schema(new))
    assert any(change.startswith(expected) for change in found), found


def test_every_event_has_a_schema_of_its_type_and_version() -> None:
    schemas = event_schemas()
    assert len(schemas) == 18
    assert all(name.endswith(".v1.schema.json") for name in schemas)
    assert (
        breaking_changes(schemas["message.received.v1.schema.json"], schemas["message.received.v1.schema.json"]) == []
    )
