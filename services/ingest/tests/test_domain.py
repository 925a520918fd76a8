"""Unit tests of ingest's pure rules: signatures and normalisation of every sample Meta sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from waflow_common.events.inbound import (
    AccountUpdateEvent,
    MessageReceivedEvent,
    MessageStatusEvent,
    TemplateStatusEvent,
    inbound_adapter,
)
from waflow_ingest.domain import InvalidWebhook, Normalised, NumberOwner, normalise, parse_body
from waflow_ingest.signature import sign, signature_valid
from waflow_testing.fixtures import FIXTURES

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TENANT_A_NUMBER, TENANT_B_NUMBER = "118273645501928", "118273645577310"
TENANT_A_WABA = "104882910347561"


APP = "700100200300"


def run(body: Any, known: dict[str, str] | None = None, *, app_id: str = APP) -> Normalised:
    """Normalises `body` as signed by `app_id`; tenants a and b (and any in `known`) are registered under APP."""
    numbers = known if known is not None else {TENANT_A_NUMBER: "a", TENANT_B_NUMBER: "b"}
    owners = {number: NumberOwner(tenant, APP) for number, tenant in numbers.items()}
    return normalise(
        body,
        app_id=app_id,
        owner_of_number=owners.get,
        owner_of_waba={TENANT_A_WABA: NumberOwner("a", APP)}.get,
        correlation_id="corr-1",
        now=NOW,
    )


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "whatsapp" / name).read_text())
    return loaded


# --- signatures ------------------------------------------------------------------------------------------------


def test_signature_over_raw_bytes_accepts_the_right_secret_only() -> None:
    body = json.dumps({"name": "José 🎉"}, ensure_ascii=True, separators=(",", ":")).encode()
    assert b"\\u00e9" in body  # Meta escapes non-ASCII; the HMAC is over these bytes, not a re-encoding
    header = sign("s3cret", body)
    assert signature_valid("s3cret", body, header)
    assert signature_valid("s3cret", body, header.upper().replace("SHA256=", "sha256="))
    assert not signature_valid("other", body, header)
    assert not signature_valid("s3cret", body + b" ", header)
    assert not signature_valid("s3cret", json.dumps({"name": "José 🎉"}).encode(), header)


@pytest.mark.parametrize("header", [None, "", "sha1=abc", "sha256=", "sha256=zz", "abc"])
def test_missing_or_malformed_signature_is_refused(header: str | None) -> None:
    assert not signature_valid("s3cret", b"{}", header)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b'{"entry":[', b'{"a":"\\ud800"}', b"\xff\xfe{}", b"[" * 1100 + b"]" * 1100],
    ids=["text", "empty", "truncated", "lone surrogate", "not utf-8", "deeper than 1024"],
)
def test_bytes_that_are_not_json_are_invalid(body: bytes) -> None:
    with pytest.raises(InvalidWebhook):
        parse_body(body)


@pytest.mark.parametrize(
    "body",
    [[], "text", 5, None, {"object": "page", "entry": []}, {"object": "whatsapp_business_account"}, {"entry": 5}],
)
def test_json_that_is_not_a_webhook_is_one_whole_body_failure(body: Any) -> None:
    result = run(body)
    assert result.events == []
    (failure,) = result.failures
    assert failure.whole_body
    assert failure.reason.startswith("body is not a WhatsApp webhook")


# --- every sample ----------------------------------------------------------------------------------------------

MESSAGE_SAMPLES = {
    "audio_voice_note.json": "audio",
    "bsuid_only_message.json": "text",
    "contacts_card.json": "contacts",
    "document.json": "document",
    "image_with_caption.json": "image",
    "interactive_button_reply.json": "interactive",
    "interactive_list_reply.json": "interactive",
    "interactive_nfm_reply.json": "interactive",
    "location.json": "location",
    "order.json": "order",
    "product_inquiry.json": "text",
    "reaction_add.json": "reaction",
    "reaction_remove.json": "reaction",
    "referral_ad.json": "text",
    "reply_with_context.json": "text",
    "system_number_change.json": "system",
    "template_button.json": "button",
    "text_forwarded_many_times.json": "text",
    "text_message.json": "text",
    "unsupported_type.json": "unsupported",
}
STATUS_SAMPLES = {
    "bsuid_only_status.json": "delivered",
    "status_sent.json": "sent",
    "status_delivered.json": "delivered",
    "status_read.json": "read",
    "status_failed_131047.json": "failed",
}


def test_every_sample_file_is_covered() -> None:
    files = {p.name for p in (FIXTURES / "whatsapp").glob("*.json")}
    covered = set(MESSAGE_SAMPLES) | set(STATUS_SAMPLES) | {"multi_entry_batch.json", "template_status_rejected.json"}
    assert files == covered


@pytest.mark.parametrize(("name", "content_type"), sorted(MESSAGE_SAMPLES.items()))
def test_message_samples_become_typed_message_events(name: str, content_type: str) -> None:
    body = sample(name)
    result = run(body)
    assert not result.failures
    (event,) = result.events
    assert isinstance(event, MessageReceivedEvent)
    raw = body["entry"][0]["changes"][0]["value"]["messages"][0]
    assert event.payload.wamid == raw["id"]
    assert event.payload.wa_id == raw["from"]
    assert event.payload.content.type == content_type
    assert event.occurred_at == datetime.fromtimestamp(int(raw["timestamp"]), UTC)
    assert event.tenant_id == "a"
    # The event survives the wire: what consumers parse equals what was produced.
    assert inbound_adapter.validate_json(event.to_json()) == event


@pytest.mark.parametrize(("name", "status"), sorted(STATUS_SAMPLES.items()))
def test_status_samples_become_status_events(name: str, status: str) -> None:
    result = run(sample(name))
    (event,) = result.events
    assert isinstance(event, MessageStatusEvent)
    assert event.payload.status == status
    if status == "failed":
        assert [e.code for e in event.payload.errors] == [131047]


def test_typed_content_keeps_what_agents_need() -> None:
    def content(name: str) -> Any:
        event = run(sample(name)).events[0]
        assert isinstance(event, MessageReceivedEvent)
        return event.payload

    image = content("image_with_caption.json")
    assert image.content.caption
    assert image.content.mime_type == "image/jpeg"
    assert content("audio_voice_note.json").content.voice is True
    assert content("reaction_remove.json").content.emoji is None
    assert content("reaction_add.json").content.emoji
    nfm = content("interactive_nfm_reply.json").content
    assert nfm.kind == "nfm_reply"
    assert json.loads(nfm.response_json)["rating"] == "4"
    assert content("interactive_list_reply.json").content.description
    reply = content("reply_with_context.json")
    assert reply.context is not None
    assert reply.context.quoted_wamid
    assert content("text_forwarded_many_times.json").context.frequently_forwarded is True
    assert content("product_inquiry.json").context.referred_product is not None
    assert content("referral_ad.json").referral.ctwa_clid
    system = content("system_number_change.json")
    assert system.content.system_type == "user_changed_number"
    assert system.content.new_wa_id == "15557650000"
    assert system.profile_name is None  # system messages come without contacts
    order = content("order.json").content
    assert len(order.product_items) == 2
    assert isinstance(order.product_items[0].item_price, float)
    unsupported = content("unsupported_type.json")
    assert unsupported.content.original_type == "poll"
    assert unsupported.errors[0].code == 131051


def test_unknown_message_type_is_kept_raw_as_unsupported() -> None:
    body = sample("text_message.json")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message["type"] = "hologram"
    message["hologram"] = {"frames": 3}
    (event,) = run(body).events
    assert isinstance(event, MessageReceivedEvent)
    assert event.payload.content.type == "unsupported"
    assert event.payload.content.original_type == "hologram"
    assert event.payload.content.raw["hologram"] == {"frames": 3}


def test_multi_entry_batch_yields_every_message_status_and_error() -> None:
    result = run(sample("multi_entry_batch.json"))
    kinds = [type(e).__name__ for e in result.events]
    assert kinds.count("MessageReceivedEvent") == 3
    assert kinds.count("MessageStatusEvent") == 2
    assert kinds.count("AccountUpdateEvent") == 1
    assert sorted(result.tenant_ids) == ["a", "b"]
    profiles = {e.payload.wa_id: e.payload.profile_name for e in result.events if isinstance(e, MessageReceivedEvent)}
    assert profiles["447700900123"] == "Tom Hughes"  # matched by wa_id, never by array position
    assert profiles["15557654321"] == "Maria Lopez"


def test_event_ids_are_deterministic_across_deliveries() -> None:
    first = [e.event_id for e in run(sample("multi_entry_batch.json")).events]
    again = [e.event_id for e in run(sample("multi_entry_batch.json")).events]
    assert first == again
    assert len(set(first)) == len(first)


def test_status_event_id_depends_on_status_and_timestamp() -> None:
    delivered = run(sample("status_delivered.json")).events[0]
    read = run(sample("status_read.json")).events[0]
    assert delivered.event_id != read.event_id


def test_unknown_number_is_counted_not_routed() -> None:
    result = run(sample("text_message.json"), known={})
    assert result.events == []
    assert result.unrouted_entries == 1
    assert result.unrouted_phone_number_ids == [TENANT_A_NUMBER]


def test_one_broken_item_does_not_drop_the_others() -> None:
    body = sample("multi_entry_batch.json")
    del body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    result = run(body)
    assert len(result.failures) == 1
    assert "message" in result.failures[0].reason
    assert sum(isinstance(e, MessageReceivedEvent) for e in result.events) == 2


def test_template_status_update_is_its_own_event() -> None:
    (event,) = run(sample("template_status_rejected.json")).events
    assert isinstance(event, TemplateStatusEvent)
    assert event.payload.event == "REJECTED"
    assert event.payload.name == "winter_sale_promo"
    assert event.payload.detail["rejection_info"]["reason"]


def test_other_fields_become_account_updates() -> None:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": TENANT_A_WABA,
                "time": 1767263000,
                "changes": [
                    {
                        "field": "account_update",
                        "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": [{"restriction_type": "X"}]},
                    }
                ],
            }
        ],
    }
    (event,) = run(body).events
    assert isinstance(event, AccountUpdateEvent)
    assert event.payload.event == "ACCOUNT_RESTRICTION"
    assert event.occurred_at == datetime.fromtimestamp(1767263000, UTC)
