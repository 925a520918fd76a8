"""What every service's REST API shares: the error body, tenant authentication, health, correlation ids."""

from __future__ import annotations

import copy
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from waflow_common.events import asyncapi
from waflow_common.logs import log_context
from waflow_common.metrics import observe_http
from waflow_common.tenants import Tenant, TenantRegistry

log = logging.getLogger(__name__)
access_log = logging.getLogger("waflow.access")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # asked every few seconds: at debug level only

CORRELATION_HEADER = "X-Correlation-Id"


class ApiError(Exception):
    """An error a client caused or must know about; services subclass it per domain error."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class ServiceUnavailable(ApiError):
    status_code = 503
    code = "unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, in a word clients can branch on", examples=["not_found"])
    message: str = Field(description="for people", examples=["chat not found"])
    details: Any = Field(default=None, description="more, where there is more (e.g. the fields that were wrong)")


class ErrorBody(BaseModel):
    """The one shape of every error answer of every service."""

    error: ErrorDetail


ERROR_SCHEMA_REF = {"$ref": "#/components/schemas/ErrorBody"}


def error_response(description: str, code: str, message: str) -> dict[str, Any]:
    """An OpenAPI response object for one error status: the shared error body, with an example."""
    return {
        "description": description,
        "content": {"application/json": {"schema": ERROR_SCHEMA_REF, "example": error_body(code, message)}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_response("The body is not JSON, or not UTF-8", "invalid_body", "the body is not valid JSON"),
    401: error_response("Missing or unknown API key", "unauthorized", "a valid Bearer API key is required"),
    404: error_response("Not found (or another tenant's)", "not_found", "chat not found"),
    422: error_response("Invalid input", "invalid_request", "body.text: Field required"),
    503: error_response("A dependency (the database) is unavailable; retry", "unavailable", "retry later"),
}


_OPERATION_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _allow_index(app: FastAPI) -> list[tuple[re.Pattern[str], int, frozenset[str]]]:
    """The documented paths as patterns, with their number of parameters and their methods (built once)."""
    index: list[tuple[re.Pattern[str], int, frozenset[str]]] | None = getattr(app.state, "allow_index", None)
    if index is None:
        index = []
        for template, operations in app.openapi().get("paths", {}).items():
            parts = re.split(r"(\{[^}]+\})", template)
            pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
            methods = frozenset(m.upper() for m in operations if m in _OPERATION_METHODS)
            index.append((re.compile(pattern), sum(p.startswith("{") for p in parts), methods))
        app.state.allow_index = index
    return index


def _allowed_methods(request: Request) -> str | None:
    """Allow: every method the document declares on this path (Starlette names only the first route's).

    Where templates overlap (`/members/remove` and `/members/{contact_id}`), the most literal one is the path.
    """
    matches = [(n, methods) for pattern, n, methods in _allow_index(request.app) if pattern.fullmatch(request.url.path)]
    if not matches:
        return None
    fewest = min(n for n, _ in matches)
    return ", ".join(sorted(set().union(*(methods for n, methods in matches if n == fewest))))


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"code", "message"}}`; nothing leaves as a bare 500 page."""

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            # A body that cannot be read at all is a 400, like one that is not UTF-8; 422 is for a body that
            # reads but does not fit.
            return JSONResponse(error_body("invalid_body", "the body is not valid JSON"), status_code=400)
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse(error_body("invalid_request", message, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            if allowed is not None:
                headers["Allow"] = allowed
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not decode (not UTF-8, a broken form).
            return JSONResponse(
                error_body("invalid_body", "the body could not be read (JSON in UTF-8 is expected)"),
                status_code=400,
                headers=headers,
            )
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(ConnectionFailure)
    async def on_database_unreachable(_: Request, exc: ConnectionFailure) -> JSONResponse:
        # The request was fine and may be retried as it is: the database server is restarting or unreachable.
        log.warning("database unreachable", extra={"error": str(exc)[:300]})
        body = error_body("unavailable", "the database is unreachable; retry shortly")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    document_errors(app)


def document_errors(app: FastAPI) -> None:
    """Declares the shared error answers on every operation of the app's OpenAPI document, in one place.

    Each operation gets the ErrorBody schema on every error it declares, and the errors any route of its kind
    can give: 401 where a key is required, 400 where there is a body, 404 where the path names something,
    422 where there is input, 503 where it needs the database. A route's own declaration (its own example)
    is kept; only the schema is added to it.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components["ErrorBody"] = error_schema
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if method in {"get", "put", "post", "delete", "patch"}:
                    _declare_errors(path, operation)
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")


def _declare_errors(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if path in _HEALTH_PATHS:
        return
    parameters = operation.get("parameters", [])
    wanted: list[int] = []
    if operation.get("security"):
        wanted += [401, 503]
    if "requestBody" in operation:
        wanted.append(400)
    if any(p.get("in") == "path" for p in parameters):
        wanted.append(404)
    if parameters or "requestBody" in operation:
        wanted.append(422)
    for wanted_status in wanted:
        responses.setdefault(str(wanted_status), copy.deepcopy(ERROR_RESPONSES[wanted_status]))
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            # Also replaces FastAPI's own 422 schema (HTTPValidationError), which is not what is answered.
            content = response.setdefault("content", {}).setdefault("application/json", {})
            content["schema"] = ERROR_SCHEMA_REF
            if status == "422" and "example" not in content and "examples" not in content:
                # FastAPI's default 422 ("Validation Error", no example): ours instead.
                response.update(copy.deepcopy(ERROR_RESPONSES[422]))


class CorrelationMiddleware:
    """Takes the caller's X-Correlation-Id (or makes one), puts it in the logs and echoes it back, and writes
    the access log: one line per request with its method, path, status, duration, correlation id and the
    tenant its API key named (set by `tenant_dependency`), so an operator can follow one tenant's calls.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs a task and a body copy per request, which
    shows up on the webhook hot path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = ""
        for name, value in scope.get("headers", ()):
            if name == _CORRELATION_HEADER_BYTES:
                correlation_id = value.decode("latin-1")[:200]
                break
        correlation_id = correlation_id or str(uuid.uuid4())
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        header = (_CORRELATION_HEADER_BYTES, correlation_id.encode("latin-1"))

        status = 500  # a request that ends without a response start ended in an error

        async def send_with_header(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        started = time.perf_counter()
        with log_context(correlation_id=correlation_id):
            try:
                await self.app(scope, receive, send_with_header)
            finally:
                elapsed = time.perf_counter() - started
                observe_http(scope, status, elapsed)
                tenant_id = scope["state"].get("tenant_id")
                access_log.log(
                    logging.DEBUG if scope.get("path") in _PROBES else logging.INFO,
                    "%s %s %s",
                    scope.get("method"),
                    scope.get("path"),
                    status,
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    }
                    | ({"tenant_id": tenant_id} if isinstance(tenant_id, str) else {}),
                )


_CORRELATION_HEADER_BYTES = CORRELATION_HEADER.lower().encode()


def install_correlation(app: FastAPI) -> None:
    app.add_middleware(CorrelationMiddleware)


_bearer = HTTPBearer(auto_error=False)


def tenant_dependency(get_registry: Callable[[Request], TenantRegistry]) -> Callable[..., Awaitable[Tenant]]:
    """A FastAPI dependency: the Bearer API key decides the tenant; no key or an unknown one is a 401."""

    async def current_tenant(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Tenant:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("a Bearer API key is required")
        tenant = get_registry(request).tenant_for_api_key(credentials.credentials)
        if tenant is None:
            raise Unauthorized("unknown API key")
        request.state.tenant_id = tenant.tenant_id
        return tenant

    return current_tenant


def health_router(ready_checks: Callable[[Request], Awaitable[dict[str, bool]]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="The process can do its work (its dependencies answer)")
    async def readyz(request: Request) -> JSONResponse:
        checks = await ready_checks(request)
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # The events are one contract for every service, so each serves the whole document (docs/asyncapi.json).
    @router.get(
        "/asyncapi.json",
        tags=["events"],
        summary="The AsyncAPI 3.0 document of waflow's topics and events",
        response_class=JSONResponse,
        responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
    )
    async def asyncapi_document() -> Response:
        return Response(asyncapi.document_json(), media_type="application/json")

    @router.get("/asyncapi", tags=["events"], summary="The topics and events, as a page", response_class=HTMLResponse)
    async def asyncapi_page() -> HTMLResponse:
        return HTMLResponse(asyncapi.page())

    return router
