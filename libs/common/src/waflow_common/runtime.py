"""How every service's process starts: logging, process-level tuning once its modules are loaded, the HTTP server."""

from __future__ import annotations

import gc
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from waflow_common.logs import configure_logging


def tune_garbage_collector(young_objects: int = 50_000) -> None:
    """Moves everything loaded so far (modules, models, settings: alive as long as the process) out of the
    collector's generations and collects less often. Measured on ingest at 1,000 webhooks/s: p99 75 ms → 9-36 ms,
    because full collections over those long-lived objects had been landing in the request latency tail. A young
    collection's pause grows with `young_objects` (about 25 ms at 50,000 with outbound's jobs alive), so a service
    whose timing matters at that scale passes fewer."""
    gc.freeze()
    gc.set_threshold(young_objects, 20, 20)


def serve_api(
    create_app: Callable[[], ASGIApp],
    *,
    host: str,
    port: int,
    log_level: str,
    young_objects: int = 50_000,
    uvicorn_access_log: bool = False,
) -> None:
    """Runs a service: its logs as JSON lines, the collector tuned, then the app under uvicorn until stopped.

    uvicorn's own access log is off unless asked for: `http.CorrelationMiddleware` writes one line per request,
    with the tenant and the correlation id that uvicorn's lacks (ingest's webhook path, which bypasses the
    middleware for speed, keeps uvicorn's)."""
    configure_logging(log_level)
    tune_garbage_collector(young_objects)
    uvicorn.run(create_app(), host=host, port=port, log_config=None, access_log=uvicorn_access_log)
