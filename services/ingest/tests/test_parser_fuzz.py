"""Property-based fuzzing of the webhook parser: whatever an authentic body holds, the parser answers with one of
its documented outcomes (events, dead-lettered items, unrouted or foreign entries, or InvalidWebhook for bytes that
are not JSON) and never raises anything else."""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waflow_common.events.dead_letter import DeadLetter
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent, MessageStatus, inbound_adapter
from waflow_common.settings import CommonSettings
from waflow_ingest.dead_letters import item_dead_letters
from waflow_ingest.domain import InvalidWebhook, Normalised, NumberOwner, normalise, parse_body
from waflow_ingest.webhook_models import MAX_ITEM_BYTES, MAX_TEXT_CHARS

from .hostile import compact, nested, paths, removed, replaced, sample, sample_names, wrong_type_grid

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
APP = "700100200300"
OWNERS = {
    "118273645501928": NumberOwner("a", APP),
    "118273645577310": NumberOwner("b", "another-app"),
}
WABAS = {"104882910347561": NumberOwner("a", APP)}
SETTINGS = CommonSettings(waflow_secrets_key=base64.b64encode(b"k" * 32).decode())
FUZZ = settings(
    max_examples=150,
    deadline=None,  # tests never assert durations; the machine is shared
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def outcome(body: Any) -> Normalised:
    """Runs the parser and checks that what it produced is what ingest may publish."""
    result = normalise(
        body,
        app_id=APP,
        owner_of_number=OWNERS.get,
        owner_of_waba=WABAS.get,
        correlation_id="fuzz",
        now=NOW,
    )
    for event in result.events:
        assert event.tenant_id == "a"  # b is another app's tenant: never routed
        assert inbound_adapter.validate_json(event.to_json()) == event
        payload = event.payload
        if isinstance(payload, MessageReceived | MessageStatus):
            assert payload.wa_id == "" or payload.wa_id.isdigit()
            assert payload.customer_id
            assert payload.wamid.startswith("wamid.")
        if isinstance(event, MessageReceivedEvent):
            assert len(event.to_json()) < MAX_ITEM_BYTES + 64 * 1024
            body_text = getattr(event.payload.content, "body", None)
            assert body_text is None or len(body_text) <= MAX_TEXT_CHARS
    letters = list(
        item_dead_letters(
            result.failures, SETTINGS, app_id=APP, correlation_id="fuzz", now=NOW, body="{}", archive_id="x"
        )
    )
    assert len(letters) == len(result.failures)
    for failure, letter in zip(result.failures, letters, strict=True):
        assert failure.reason
        assert failure.tenant_id in (None, "a")
        DeadLetter.model_validate_json(letter.value)
    assert "b" not in result.tenant_ids
    return result


def through_bytes(raw: bytes) -> None:
    try:
        parsed = parse_body(raw)
    except InvalidWebhook:
        return
    outcome(parsed)


# --- JSON of any shape ------------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "wamid.x", "118273645501928", "15557654321", "US.1349", "messages", "text", "1767262000"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
# Shaped a little like a webhook, so the fuzzer gets past the outer layers often.
webhook_like = st.fixed_dictionaries(
    {"object": st.just("whatsapp_business_account") | json_values},
    optional={
        "entry": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.just("104882910347561") | json_values,
                    "time": st.just(1767263000) | json_values,
                    "changes": st.lists(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "field": st.sampled_from(["messages", "account_update"]) | json_values,
                                "value": st.dictionaries(
                                    st.sampled_from(["metadata", "contacts", "messages", "statuses", "errors"]),
                                    json_values,
                                )
                                | json_values,
                            },
                        ),
                        max_size=3,
                    )
                    | json_values,
                },
            ),
            max_size=3,
        )
        | json_values
    },
)


@FUZZ
@given(json_values)
def test_any_json_value_gets_a_documented_outcome(body: Any) -> None:
    outcome(body)


@FUZZ
@given(webhook_like)
def test_anything_shaped_like_a_webhook_gets_a_documented_outcome(body: Any) -> None:
    outcome(body)


# --- Meta's samples, broken one field at a time ------------------------------------------------------------------

SAMPLES = {name: sample(name) for name in sample_names()}
SAMPLE_PATHS = [(name, path) for name, body in SAMPLES.items() for path in paths(body)]
hostile_values = (
    json_values
    | st.integers(min_value=200, max_value=1100).map(nested)
    | st.sampled_from([MAX_TEXT_CHARS + 1, MAX_ITEM_BYTES, 2 * 1024 * 1024]).map(lambda n: "x" * n)
    | st.text(alphabet=string.printable + "\u202e\u2028\x00é🎉", min_size=1, max_size=200)
)


@FUZZ
@given(st.sampled_from(SAMPLE_PATHS), hostile_values)
def test_a_sample_with_any_field_replaced_gets_a_documented_outcome(where: tuple[str, Any], new: Any) -> None:
    name, path = where
    outcome(replaced(SAMPLES[name], path, new))


@FUZZ
@given(st.sampled_from(SAMPLE_PATHS))
def test_a_sample_with_any_field_missing_gets_a_documented_outcome(where: tuple[str, Any]) -> None:
    name, path = where
    outcome(removed(SAMPLES[name], path))


@FUZZ
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_malformed_bytes_are_refused_or_read(name: str, data: st.DataObject) -> None:
    raw = compact(SAMPLES[name])
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    flip = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    byte = data.draw(st.integers(min_value=0, max_value=255))
    through_bytes(raw[:cut])
    through_bytes(raw[:flip] + bytes([byte]) + raw[flip + 1 :])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_or_read(raw: bytes) -> None:
    through_bytes(raw)


@pytest.mark.parametrize("name", ["text_message.json", "status_read.json", "multi_entry_batch.json"])
def test_every_field_with_every_wrong_type_or_missing_gets_a_documented_outcome(name: str) -> None:
    """The grid the report used (each field x string, number, object, array, null, bool), done exhaustively."""
    cases = list(wrong_type_grid(name))
    assert len(cases) > 100
    for _label, body in cases:
        outcome(body)


def test_nesting_at_every_depth_up_to_the_json_limit_gets_a_documented_outcome() -> None:
    body = sample("text_message.json")
    for levels in (47, 48, 49, 200, 253, 254, 255, 300, 1000):
        message = body["entry"][0]["changes"][0]["value"]["messages"][0]
        outcome(replaced(body, ("entry", 0, "changes", 0, "value", "messages", 0), {**message, "x": nested(levels)}))
        raw = compact(body)
        through_bytes(b'{"extra":' + b"[" * levels + b"]" * levels + b"," + raw[1:])
