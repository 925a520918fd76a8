"""The OpenAPI documents and the servers agree on the cases that were found to disagree: a limit the server
enforces is the schema's limit, a boolean is a boolean, 405 names every method of the path, and a body that is
not UTF-8 or not JSON gets a documented 400 in the one error shape."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest


def document(stack: Any, service: str) -> dict[str, Any]:
    spec: dict[str, Any] = httpx.get(stack.url(service) + "/openapi.json", timeout=10).json()
    return spec


def body_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    ref = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_a_list_name_the_schema_allows_is_accepted_and_one_longer_is_refused(stack: Any) -> None:
    limit = body_schema(document(stack, "contacts"), "/v1/lists", "post")["properties"]["name"]["maxLength"]
    with httpx.Client(base_url=stack.url("contacts"), headers=stack.auth, timeout=10) as http:
        assert http.post("/v1/lists", json={"name": "L" * limit}).status_code == 201
        assert_error(http.post("/v1/lists", json={"name": "M" * (limit + 1)}), 422, "invalid_request")


def test_invalid_tags_are_refused_even_for_a_number_that_has_a_contact(stack: Any) -> None:
    phone = f"+34 61{random.randrange(10**7):07d}"  # a Spanish mobile number
    with httpx.Client(base_url=stack.url("contacts"), headers=stack.auth, timeout=10) as http:
        assert http.post("/v1/contacts", json={"phone": phone}).status_code == 201
        assert_error(http.post("/v1/contacts", json={"phone": phone, "tags": [""]}), 422, "invalid_field")


def test_preview_url_zero_is_not_a_boolean(stack: Any) -> None:
    chat_id = stack.seeded["chat_id"]
    with httpx.Client(base_url=stack.url("conversation"), headers=stack.auth, timeout=10) as http:
        refused = http.post(f"/v1/chats/{chat_id}/messages", json={"type": "text", "body": "hi", "preview_url": 0})
    assert_error(refused, 422, "invalid_request")
    assert "preview_url" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("service", "path", "methods"),
    [
        ("conversation", "/v1/chats", {"GET", "POST"}),
        ("conversation", "/v1/chats/ch_x/messages/msg_x", {"GET", "DELETE"}),
        ("contacts", "/v1/contacts/c_x", {"GET", "PATCH", "DELETE"}),
        ("contacts", "/v1/lists/l_x/members/remove", {"POST"}),
        ("outbound", "/v1/templates/t_x/favourite", {"PUT", "DELETE"}),
        ("ingest", "/webhooks/whatsapp/123", {"GET", "POST"}),
    ],
)
def test_405_names_every_documented_method_of_the_path(stack: Any, service: str, path: str, methods: set[str]) -> None:
    response = httpx.request("TRACE", stack.url(service) + path, headers=stack.auth, timeout=10)
    assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == methods


@pytest.mark.parametrize("body", [b'{"name": "\xff\xfe"}', b'{"name": '], ids=["not-utf8", "not-json"])
def test_an_unreadable_body_is_a_documented_400(stack: Any, body: bytes) -> None:
    response = httpx.post(
        stack.url("contacts") + "/v1/lists",
        content=body,
        headers=stack.auth | {"Content-Type": "application/json"},
        timeout=10,
    )
    assert_error(response, 400, "invalid_body")
    declared = document(stack, "contacts")["paths"]["/v1/lists"]["post"]["responses"]
    assert declared["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


@pytest.mark.parametrize("service", ["conversation", "contacts", "outbound", "ingest"])
def test_every_error_an_operation_declares_has_the_error_shape(stack: Any, service: str) -> None:
    spec = document(stack, service)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (service, method, path, status)
            if operation.get("security"):
                assert "401" in operation["responses"], (service, method, path)
            if "requestBody" in operation:
                assert "400" in operation["responses"], (service, method, path)
