"""Hostile input, from each service's own OpenAPI document: `schemathesis run` generates valid and invalid
requests for every operation (the documents' examples, boundary values, wrong types, missing and extra fields,
other methods, no key) and every answer must be one the document declares: no 5xx, only declared status codes,
content types, headers and body shapes, valid input accepted, invalid input refused.

The stack runs as processes (see conftest); requests carry the dev tenant's key and, half the time, ids that
exist, so they reach past authentication into the real services, Kafka and the database.

`make test` runs a short, derandomised pass (schemathesis's deterministic mode): WAFLOW_HOSTILE_EXAMPLES examples
per operation, 20 by default, the same inputs on every run, so CI is stable. For `make soak`, set
WAFLOW_HOSTILE_EXAMPLES to a few hundred and WAFLOW_HOSTILE_SEED to any integer: the inputs are then random
from that seed (a failure is replayed with the same seed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = int(os.environ.get("WAFLOW_HOSTILE_EXAMPLES", "20"))
SEED = os.environ.get("WAFLOW_HOSTILE_SEED")
HERE = Path(__file__).resolve().parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def run_schemathesis(stack: Any, service: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS),
        "run",
        stack.url(service) + "/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        *(["--seed", SEED] if SEED else ["--generation-deterministic"]),
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {stack.api_key}",
        "--no-color",
        "--output-truncate",
        "false",
        *extra,
    ]
    env = os.environ | {
        "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
        "WAFLOW_HOSTILE_IDS": json.dumps(stack.seeded | {"app_id": stack.app_id}),
        "WAFLOW_HOSTILE_APP_SECRET": stack.app_secret,
    }
    # Its own working directory: schemathesis keeps a cache of past failures there, which would make runs
    # depend on what ran before.
    return subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=1800, check=False)


@pytest.mark.parametrize("service", ["conversation", "contacts", "outbound", "ingest"])
def test_every_answer_is_the_documented_one(stack: Any, service: str, tmp_path: Path) -> None:
    result = run_schemathesis(stack, service, tmp_path)
    assert result.returncode == 0, (
        f"schemathesis found answers {service}'s OpenAPI does not declare:\n{result.stdout}\n{result.stderr}\n"
        f"--- {service} log\n{stack.log_tail(service)}"
    )
