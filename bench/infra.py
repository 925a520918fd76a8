"""What the benchmarks share: a namespace of their own, and Kafka/FerretDB (given by env, or started here)."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "deploy" / "local" / "infra.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_from(env: dict[str, str]) -> CommonSettings:
    return CommonSettings.model_validate(
        {k.lower(): v for k, v in env.items() if k.lower() in CommonSettings.model_fields}
    )


@contextmanager
def bench_environment(name: str, *, mongo: bool) -> Iterator[dict[str, str]]:
    """Environment for the benchmark's processes: a fresh topic/db prefix and secrets key, and the servers of
    KAFKA_BOOTSTRAP_SERVERS (and MONGODB_URI) when set, otherwise ones started on free ports and wiped after."""
    run = uuid.uuid4().hex[:6]
    env = dict(os.environ) | {
        "WAFLOW_SECRETS_KEY": generate_key(),
        "WAFLOW_TOPIC_PREFIX": f"bench{run}.",
        "WAFLOW_DB_PREFIX": f"bench{run}_",
        "LOG_LEVEL": "WARNING",
    }
    given = "KAFKA_BOOTSTRAP_SERVERS" in os.environ and (not mongo or "MONGODB_URI" in os.environ)
    infra_env = env | {
        "WAFLOW_DATA": str(REPO / ".data" / f"bench-{name}"),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "MONGO_PORT": str(free_port()),
    }
    if not given:
        subprocess.run(["bash", str(INFRA), "wipe"], env=infra_env, check=True)
        subprocess.run(["bash", str(INFRA), "start", "all" if mongo else "kafka"], env=infra_env, check=True)
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{infra_env['KAFKA_PORT']}"
        if mongo:
            env["MONGODB_URI"] = f"mongodb://127.0.0.1:{infra_env['MONGO_PORT']}"
    try:
        yield env
    finally:
        if not given:
            subprocess.run(["bash", str(INFRA), "wipe"], env=infra_env, check=False)
