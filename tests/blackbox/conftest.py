"""The black-box suite's stack: every process of it started from its console entry point (waflow_testing.stack).

The suite runs two instances of each consumer service (conversation, contacts, outbound), as a scaled deployment
does; the tests' REST calls go through the instances in turn. WAFLOW_BLACKBOX_INSTANCES=1 (or 3...) runs it with
another count."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from waflow_testing.fixtures import REPO, Infra
from waflow_testing.stack import Stack, instances_from_env


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(infra: Infra, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """One stack per test module (a module's tests may kill and restart its processes, never stop it). The
    processes' logs are kept in .data/blackbox/ when a test of the module failed."""
    workdir = REPO / ".data" / "blackbox" / f"{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}"
    failed_before = request.session.testsfailed
    async with Stack(
        kafka_bootstrap=infra.kafka_bootstrap,
        mongodb_uri=infra.mongodb_uri,
        workdir=workdir,
        instances=instances_from_env(default=2),
    ) as stack:
        yield stack
    if request.session.testsfailed == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)
