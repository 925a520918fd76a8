"""Simulator settings read from `SIMULATOR_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SimulatorSettings(BaseSettings):
    """Where the simulator listens and how it delivers webhooks."""

    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=1, le=65535)
    retry_base_seconds: float = Field(default=0.5, ge=0)
    retry_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Webhook POSTs in flight at once, across all apps (Meta delivers concurrently too).
    webhook_concurrency: int = Field(default=64, ge=1)
    # Bounded so a long load test cannot exhaust memory; the oldest records are dropped first.
    max_log_entries: int = Field(default=200_000, ge=1)
    access_log: bool = False
