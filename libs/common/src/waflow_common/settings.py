"""Settings every waflow process reads from its environment (pydantic-settings)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every process needs: where Kafka and MongoDB are, the secrets key, logging.

    `WAFLOW_TOPIC_PREFIX` and `WAFLOW_DB_PREFIX` let test runs and parallel stacks share one broker and one
    MongoDB server without ever seeing each other's data.
    """

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    whatsapp_api_base_url: str = "http://127.0.0.1:8090"
    waflow_secrets_key: SecretStr = Field(
        default=SecretStr(""),
        description="base64 of 32 random bytes; decrypts the tenant secrets carried on tenants.v1",
    )
    log_level: str = "INFO"
    waflow_topic_prefix: str = ""
    waflow_db_prefix: str = ""
    # Replicas of each topic `waflow-admin topics create` makes: 1 for a development broker, 3 in production
    # (then with min.insync.replicas=2, so that an acknowledged record survives the loss of a broker).
    waflow_topic_replication_factor: int = Field(default=1, ge=1)
    # How long a producer may wait for Kafka's acknowledgement before the caller gives up (ingest answers 503).
    kafka_publish_timeout_seconds: float = 5.0

    def topic(self, name: str) -> str:
        return f"{self.waflow_topic_prefix}{name}"

    def group(self, name: str) -> str:
        """A consumer group of this deployment: stacks sharing a broker must not share (and rebalance) groups."""
        return f"{self.waflow_topic_prefix}{name}"

    def database(self, name: str) -> str:
        return f"{self.waflow_db_prefix}{name}"
