"""The shared HTTP error handling: one error shape for every failure, declared on every operation."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from pymongo.errors import ServerSelectionTimeoutError
from waflow_common.http import install_correlation, install_error_handlers, tenant_dependency
from waflow_common.logs import JsonFormatter
from waflow_common.tenants import Tenant, TenantRegistry


class Item(BaseModel):
    name: str


def _registry(request: Request) -> TenantRegistry:
    raise AssertionError("no key is ever accepted in these tests")


CurrentTenant = Annotated[Tenant, Depends(tenant_dependency(_registry))]


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {"thing_id": thing_id}

    @app.post("/things/{thing_id}")
    async def post_thing(thing_id: str, item: Item) -> dict[str, str]:
        return {"thing_id": thing_id, "name": item.name}

    @app.delete("/things/{thing_id}")
    async def delete_thing(thing_id: str) -> dict[str, str]:
        return {}

    @app.post("/things/special")
    async def special() -> dict[str, str]:
        return {}

    @app.get("/guarded")
    async def guarded(tenant: CurrentTenant) -> dict[str, str]:
        return {}

    @app.get("/database-down")
    async def database_down() -> dict[str, str]:
        raise ServerSelectionTimeoutError("no server")

    return app


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(make_app()), base_url="http://test")


def assert_error_shape(body: Any, code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def test_405_allows_every_method_of_the_path() -> None:
    async with client() as http:
        r = await http.put("/things/1")
    assert r.status_code == 405
    assert_error_shape(r.json(), "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST", "DELETE"}


async def test_405_on_an_overlapping_path_allows_the_most_literal_paths_methods() -> None:
    async with client() as http:
        r = await http.request("OPTIONS", "/things/special")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


async def test_a_body_that_is_not_utf8_is_a_400_in_the_error_shape() -> None:
    async with client() as http:
        r = await http.post("/things/1", content=b'{"name": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert_error_shape(r.json(), "invalid_body")


async def test_a_body_that_is_not_json_is_a_400_in_the_error_shape() -> None:
    async with client() as http:
        r = await http.post("/things/1", content=b'{"name": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert_error_shape(r.json(), "invalid_body")


async def test_a_body_that_does_not_fit_is_a_422() -> None:
    async with client() as http:
        r = await http.post("/things/1", json={"name": 5})
    assert r.status_code == 422
    assert_error_shape(r.json(), "invalid_request")


async def test_no_key_is_a_401_in_the_error_shape() -> None:
    async with client() as http:
        r = await http.get("/guarded")
    assert r.status_code == 401
    assert_error_shape(r.json(), "unauthorized")


async def test_the_database_down_is_a_503_not_a_500() -> None:
    async with client() as http:
        r = await http.get("/database-down")
    assert r.status_code == 503
    assert_error_shape(r.json(), "unavailable")


def test_every_operation_declares_its_errors_with_the_error_schema() -> None:
    document = make_app().openapi()
    paths = document["paths"]
    assert set(paths["/things/{thing_id}"]["post"]["responses"]) >= {"200", "400", "404", "422"}
    assert set(paths["/things/{thing_id}"]["get"]["responses"]) >= {"200", "404", "422"}
    assert set(paths["/guarded"]["get"]["responses"]) >= {"200", "401", "503"}
    for operations in paths.values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (status, response)
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    assert set(document["components"]["schemas"]["ErrorDetail"]["required"]) == {"code", "message"}


async def test_the_access_log_names_the_tenant_the_api_key_belonged_to(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    install_correlation(app)

    @app.get("/v1/mine")
    async def mine(request: Request) -> dict[str, str]:
        request.state.tenant_id = "tenant-a"  # what tenant_dependency sets once the key is known
        return {}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {}

    caplog.set_level(logging.DEBUG, logger="waflow.access")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http:
        assert (await http.get("/v1/mine", headers={"X-Correlation-Id": "corr-1"})).status_code == 200
        assert (await http.get("/v1/nowhere")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200
    lines = [r for r in caplog.records if r.name == "waflow.access"]
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/v1/mine", 200),
        ("GET", "/v1/nowhere", 404),
        ("GET", "/healthz", 200),
    ]
    assert lines[0].tenant_id == "tenant-a"  # type: ignore[attr-defined]
    assert not hasattr(lines[1], "tenant_id")
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO, logging.DEBUG]
    formatted = json.loads(JsonFormatter().format(lines[0]))
    assert (formatted["tenant_id"], formatted["path"], formatted["status"]) == ("tenant-a", "/v1/mine", 200)
    assert formatted["duration_ms"] >= 0
