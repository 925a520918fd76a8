"""The parser's typed edge: ids of the right shape, bounded sizes, BSUID customers, foreign apps, the window."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from waflow_common.events.inbound import (
    AccountUpdateEvent,
    MessageReceivedEvent,
    MessageStatusEvent,
    TemplateStatusEvent,
    TextContent,
    inbound_adapter,
)
from waflow_ingest.domain import Normalised, NumberOwner, normalise
from waflow_ingest.webhook_models import MAX_ITEM_BYTES, MAX_TEXT_CHARS
from waflow_testing.fixtures import FIXTURES

from .test_domain import APP, NOW, TENANT_A_NUMBER, TENANT_A_WABA, TENANT_B_NUMBER, run, sample

BSUID = "US.13491208655302741918"


def value_of(body: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = body["entry"][0]["changes"][0]["value"]
    return found


def message_of(body: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = value_of(body)["messages"][0]
    return found


def only_message(result: Normalised) -> MessageReceivedEvent:
    assert not result.failures, result.failures
    (event,) = result.events
    assert isinstance(event, MessageReceivedEvent)
    return event


def refused(result: Normalised, where: str) -> str:
    """The one reason the delivery's only item was dead-lettered for."""
    assert result.events == []
    (failure,) = result.failures
    assert failure.reason.startswith(where), failure.reason
    return failure.reason


# --- business-scoped user ids (BSUID) ----------------------------------------------------------------------------


def test_a_bsuid_only_message_carries_the_bsuid_username_and_profile() -> None:
    event = only_message(run(sample("bsuid_only_message.json")))
    assert event.payload.wa_id == ""
    assert event.payload.user_id == BSUID
    assert event.payload.username == "@ana.bakes"
    assert event.payload.profile_name == "Ana Duarte"
    assert event.payload.customer_id == BSUID
    assert event.key() == f"a:{BSUID}"
    assert inbound_adapter.validate_json(event.to_json()) == event


def test_a_bsuid_only_status_carries_the_bsuid() -> None:
    (event,) = run(sample("bsuid_only_status.json")).events
    assert isinstance(event, MessageStatusEvent)
    assert event.payload.wa_id == ""
    assert event.payload.user_id == BSUID
    assert event.key() == f"a:{BSUID}"


def test_two_bsuid_only_customers_get_distinct_keys_and_their_own_profiles() -> None:
    body = sample("bsuid_only_message.json")
    value = value_of(body)
    second_id = "US.88812345678901234567"
    second = {**message_of(body), "from_user_id": second_id, "id": "wamid.SECONDbsuid="}
    value["messages"].append(second)
    # Listed in the other order: contacts are matched by BSUID, never by position.
    value["contacts"].insert(0, {"profile": {"name": "Bea Okafor"}, "wa_id": "", "user_id": second_id})
    events = run(body).events
    assert len(events) == 2
    assert all(isinstance(e, MessageReceivedEvent) for e in events)
    keys = {e.key() for e in events}
    assert keys == {f"a:{BSUID}", f"a:{second_id}"}
    names = {e.payload.user_id: e.payload.profile_name for e in events if isinstance(e, MessageReceivedEvent)}
    assert names == {BSUID: "Ana Duarte", second_id: "Bea Okafor"}


def test_a_message_without_from_is_accepted_when_a_bsuid_is_given() -> None:
    body = sample("bsuid_only_message.json")
    del message_of(body)["from"]
    del value_of(body)["contacts"][0]["wa_id"]
    event = only_message(run(body))
    assert (event.payload.wa_id, event.payload.user_id) == ("", BSUID)


def test_a_number_customer_with_a_bsuid_in_contacts_gets_it() -> None:
    body = sample("text_message.json")
    value_of(body)["contacts"][0]["user_id"] = BSUID
    event = only_message(run(body))
    assert (event.payload.wa_id, event.payload.user_id) == ("15557654321", BSUID)


def test_a_contact_under_another_bsuid_is_not_taken_for_the_sender() -> None:
    body = sample("text_message.json")
    value_of(body)["contacts"][0]["user_id"] = "US.111"
    message_of(body)["from_user_id"] = "US.222"
    event = only_message(run(body))
    assert event.payload.user_id == "US.222"
    assert event.payload.profile_name is None


@pytest.mark.parametrize("sender", [{"from": ""}, {}, {"from": "", "from_user_id": ""}, {"from_user_id": None}])
def test_a_message_with_neither_a_number_nor_a_bsuid_is_refused(sender: dict[str, Any]) -> None:
    body = sample("text_message.json")
    message = message_of(body)
    del message["from"]
    message.update(sender)
    assert "nobody to attribute" in refused(run(body), "message")


def test_a_status_with_neither_recipient_is_refused() -> None:
    body = sample("status_read.json")
    value_of(body)["statuses"][0]["recipient_id"] = ""
    assert "recipient" in refused(run(body), "status")


@pytest.mark.parametrize("bsuid", ["13491208655302741918", "US", "US.", "U.123", "US.12 3", "US.abc$", 5])
def test_a_bsuid_of_the_wrong_shape_is_refused(bsuid: Any) -> None:
    body = sample("bsuid_only_message.json")
    message_of(body)["from_user_id"] = bsuid
    value_of(body)["contacts"] = []
    refused(run(body), "message")


# --- ids and types of the right shape ----------------------------------------------------------------------------


@pytest.mark.parametrize("sender", [None, True, 5, 5.0, {}, [], "+15557654321", "abc", "1" * 21])
def test_a_sender_that_is_not_digits_is_refused_not_stored_as_text(sender: Any) -> None:
    """`"from": null` used to become the customer "None" (contacts "+None")."""
    body = sample("text_message.json")
    message_of(body)["from"] = sender
    refused(run(body), "message")


@pytest.mark.parametrize("wamid", [None, 5, "", "abc", "wamid.", "wamid.has space", "wamid." + "A" * 600])
def test_a_message_id_that_is_not_a_wamid_is_refused(wamid: Any) -> None:
    body = sample("text_message.json")
    message_of(body)["id"] = wamid
    refused(run(body), "message")


@pytest.mark.parametrize("stamp", [None, True, "abc", "-5", "1.5", 1.5, "9" * 30, {}])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp: Any) -> None:
    body = sample("status_read.json")
    value_of(body)["statuses"][0]["timestamp"] = stamp
    refused(run(body), "status")


@pytest.mark.parametrize("number", [118273645501928, "118273645501928x", "", None, ["118273645501928"]])
def test_a_phone_number_id_that_is_not_digits_is_refused(number: Any) -> None:
    body = sample("text_message.json")
    value_of(body)["metadata"]["phone_number_id"] = number
    refused(run(body), "value.metadata")


@pytest.mark.parametrize(
    ("path", "bad", "where"),
    [
        (("entry", 0, "changes"), 5, "entry"),
        (("entry", 0, "id"), 104882910347561, "entry"),
        (("entry", 0, "time"), "abc", "entry"),
        (("entry", 0, "changes", 0, "value"), [], "change"),
        (("entry", 0, "changes", 0, "field"), None, "change"),
        (("entry", 0, "changes", 0, "value", "metadata"), "118273645501928", "value.metadata"),
        (("entry", 0, "changes", 0, "value", "messages"), {"id": "x"}, "value"),
        (("entry", 0, "changes", 0, "value", "messages", 0, "text"), "hello", "message"),
        (("entry", 0, "changes", 0, "value", "messages", 0, "text", "body"), 5, "message"),
        (("entry", 0, "changes", 0, "value", "messages", 0, "type"), ["text"], "message"),
        (("entry", 0, "changes", 0, "value", "messages", 0, "context"), "yes", "message"),
        (("entry", 0, "changes", 0, "value", "messages", 0, "errors"), [{"code": "x"}], "message"),
    ],
)
def test_wrong_types_anywhere_are_dead_lettered_where_they_are(path: tuple[Any, ...], bad: Any, where: str) -> None:
    """Fields that answered 500 before: `"changes": 5`, `value.metadata` as a string, `entry.time: "abc"`..."""
    body = sample("text_message.json")
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = bad
    refused(run(body), where)


def test_the_contacts_a_value_lists_may_be_broken_without_losing_the_message() -> None:
    body = sample("text_message.json")
    value_of(body)["contacts"] = [5, {"wa_id": "15557654321", "profile": {"name": ["Maria"]}}]
    result = run(body)
    (event,) = result.events
    assert isinstance(event, MessageReceivedEvent)
    assert event.payload.profile_name is None
    assert [f.reason.split(":")[0] for f in result.failures] == ["contact", "contact"]


def test_a_template_update_with_wrong_types_is_dead_lettered() -> None:
    body = sample("template_status_rejected.json")
    value_of(body)["message_template_name"] = {"not": "a name"}
    assert refused(run(body), "message_template_status_update")


# --- sizes -------------------------------------------------------------------------------------------------------


def test_a_text_of_65536_characters_is_kept_and_a_longer_one_dead_lettered() -> None:
    body = sample("text_message.json")
    message_of(body)["text"]["body"] = "é" * MAX_TEXT_CHARS
    event = only_message(run(body))
    assert isinstance(event.payload.content, TextContent)
    assert len(event.payload.content.body) == MAX_TEXT_CHARS
    message_of(body)["text"]["body"] = "é" * (MAX_TEXT_CHARS + 1)
    assert "65536" in refused(run(body), "message")


def test_a_two_megabyte_text_is_not_stored() -> None:
    body = sample("text_message.json")
    message_of(body)["text"]["body"] = "x" * (2 * 1024 * 1024)
    refused(run(body), "message")


def test_a_huge_caption_or_edited_text_is_dead_lettered() -> None:
    body = sample("image_with_caption.json")
    message_of(body)["image"]["caption"] = "x" * (MAX_TEXT_CHARS + 1)
    refused(run(body), "message")
    body = sample("text_message.json")
    message_of(body).update(
        {
            "type": "edit",
            "edit": {
                "original_message_id": "wamid.ORIGINAL=",
                "message": {"type": "text", "text": {"body": "x" * (MAX_TEXT_CHARS + 1)}},
            },
        }
    )
    refused(run(body), "message")


def test_an_item_over_the_size_bound_is_dead_lettered_even_in_an_unknown_type() -> None:
    body = sample("text_message.json")
    message_of(body).update({"type": "hologram", "hologram": {"frames": "x" * MAX_ITEM_BYTES}})
    assert "bytes" in refused(run(body), "message")


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"a": value}
    return value


def test_deep_nesting_is_dead_lettered_and_never_published() -> None:
    body = sample("text_message.json")
    message_of(body).update({"type": "hologram", "hologram": deep(300)})
    assert "nested deeper" in refused(run(body), "message")
    update = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": TENANT_A_WABA,
                "time": 1767263000,
                "changes": [{"field": "account_update", "value": {"event": "X", "info": deep(300)}}],
            }
        ],
    }
    assert "nested deeper" in refused(run(update), "account_update")


def test_deep_nesting_in_a_field_ingest_does_not_republish_is_harmless() -> None:
    body = sample("text_message.json")
    body["entry"][0]["extra"] = deep(300)
    only_message(run(body))


# --- the signing app decides which tenants a delivery may reach ---------------------------------------------------


def run_as_other_app(body: Any) -> Normalised:
    """Tenant a is registered under APP, tenant b under another app; the body is signed by APP."""
    owners = {TENANT_A_NUMBER: NumberOwner("a", APP), TENANT_B_NUMBER: NumberOwner("b", "other-app")}
    return normalise(
        body,
        app_id=APP,
        owner_of_number=owners.get,
        owner_of_waba={TENANT_A_WABA: NumberOwner("a", "other-app")}.get,
        correlation_id="corr-1",
        now=NOW,
    )


def test_entries_of_another_apps_tenant_are_foreign_never_routed() -> None:
    body = sample("multi_entry_batch.json")
    changes_of_b = [
        c
        for entry in body["entry"]
        for c in entry["changes"]
        if c["value"]["metadata"]["phone_number_id"] == TENANT_B_NUMBER
    ]
    result = run_as_other_app(body)
    assert {e.tenant_id for e in result.events} == {"a"}
    assert result.tenant_ids == ["a"]
    assert changes_of_b
    assert result.foreign_entries == len(changes_of_b)
    assert result.foreign_phone_number_ids == [TENANT_B_NUMBER]
    assert result.unrouted_entries == 0
    assert result.failures == []


def test_a_template_update_for_another_apps_waba_is_foreign() -> None:
    result = run_as_other_app(sample("template_status_rejected.json"))
    assert result.events == []
    assert result.foreign_entries == 1
    assert result.foreign_phone_number_ids == [f"waba:{TENANT_A_WABA}"]


def test_a_broken_foreign_entry_is_not_dead_lettered_under_its_tenant() -> None:
    body = sample("multi_entry_batch.json")
    for entry in body["entry"]:
        for change in entry["changes"]:
            if change["value"]["metadata"]["phone_number_id"] == TENANT_B_NUMBER:
                change["value"]["messages"] = 5
    result = run_as_other_app(body)
    assert all(f.tenant_id != "b" for f in result.failures)
    assert result.foreign_phone_number_ids == [TENANT_B_NUMBER]


# --- the 24-hour window -------------------------------------------------------------------------------------------


def customer_message(kind: str, content: Any) -> MessageReceivedEvent:
    body = sample("text_message.json")
    message = message_of(body)
    del message["text"]
    message.update({"type": kind, kind: content})
    return only_message(run(body))


@pytest.mark.parametrize(
    "name", ["text_message.json", "image_with_caption.json", "unsupported_type.json", "template_button.json"]
)
def test_customer_messages_open_the_window(name: str) -> None:
    assert only_message(run(sample(name))).payload.opens_window


def test_a_type_this_version_does_not_know_opens_the_window() -> None:
    event = customer_message("hologram", {"frames": 3})
    assert event.payload.content.type == "unsupported"
    assert event.payload.opens_window


@pytest.mark.parametrize("name", ["system_number_change.json", "reaction_add.json", "reaction_remove.json"])
def test_system_messages_and_reactions_do_not_open_the_window(name: str) -> None:
    assert not only_message(run(sample(name))).payload.opens_window


def test_edits_and_revokes_do_not_open_the_window() -> None:
    new_text = {"type": "text", "text": {"body": "I meant Tuesday"}}
    edit = customer_message("edit", {"original_message_id": "wamid.ORIG=", "message": new_text})
    revoke = customer_message("revoke", {"original_message_id": "wamid.ORIG="})
    unsupported_edit = customer_message("unsupported", {"type": "edit"})
    assert unsupported_edit.payload.content.original_type == "edit"  # type: ignore[union-attr]
    assert not any(e.payload.opens_window for e in (edit, revoke, unsupported_edit))


# --- what still works ---------------------------------------------------------------------------------------------


def test_unknown_fields_meta_adds_are_kept() -> None:
    body = sample("text_message.json")
    message_of(body)["text"]["new_flag"] = {"since": "v25"}
    message_of(body)["from_logical_id"] = "95000398405635"
    event = only_message(run(body))
    assert event.payload.content.model_extra == {"new_flag": {"since": "v25"}}


def test_every_sample_still_reads_without_a_failure() -> None:
    for path in sorted((FIXTURES / "whatsapp").glob("*.json")):
        result = run(json.loads(path.read_text()))
        assert not result.failures, (path.name, result.failures)
        assert result.events, path.name
        for event in result.events:
            assert isinstance(
                event, MessageReceivedEvent | MessageStatusEvent | TemplateStatusEvent | AccountUpdateEvent
            )
            assert inbound_adapter.validate_json(event.to_json()) == event


def test_integer_timestamps_are_read_like_strings() -> None:
    body = sample("text_message.json")
    as_int = copy.deepcopy(body)
    message_of(as_int)["timestamp"] = int(message_of(body)["timestamp"])
    assert only_message(run(as_int)).event_id == only_message(run(body)).event_id
