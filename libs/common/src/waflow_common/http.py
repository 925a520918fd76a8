"""What every service's REST API shares: the error body, tenant authentication, health, correlation ids."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from waflow_common.logs import log_context
from waflow_common.tenants import Tenant, TenantRegistry

log = logging.getLogger(__name__)

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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "Missing or unknown API key",
        "content": {"application/json": {"example": error_body("unauthorized", "a valid Bearer API key is required")}},
    },
    404: {
        "description": "Not found (or another tenant's)",
        "content": {"application/json": {"example": error_body("not_found", "chat not found")}},
    },
    422: {
        "description": "Invalid input",
        "content": {"application/json": {"example": error_body("invalid_request", "body.text: Field required")}},
    },
}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"code", "message"}}`; nothing leaves as a bare 500 page."""

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse(error_body("invalid_request", message, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

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


class CorrelationMiddleware:
    """Takes the caller's X-Correlation-Id (or makes one), puts it in the logs and echoes it back.

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

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with log_context(correlation_id=correlation_id):
            await self.app(scope, receive, send_with_header)


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

    return router
