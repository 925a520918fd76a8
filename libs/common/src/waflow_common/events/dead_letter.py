"""<topic>.dlq: a record a consumer gave up on, with everything needed to understand and replay it."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="the original value, decoded as UTF-8 with replacement for bad bytes")
    headers: dict[str, str]
    error: str = Field(description="why the consumer gave up, e.g. the validation errors")
    error_type: str
    consumer: str = Field(description="the consumer group that gave up")
    attempts: int
    failed_at: AwareDatetime
