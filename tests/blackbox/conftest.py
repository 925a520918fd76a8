"""The black-box suite's stack: every process of it started from its console entry point (waflow_testing.stack)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from waflow_testing.fixtures import Infra
from waflow_testing.stack import Stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack per test module (a module's tests may kill and restart its processes, never stop it)."""
    workdir = tmp_path_factory.mktemp("stack")
    async with Stack(kafka_bootstrap=infra.kafka_bootstrap, mongodb_uri=infra.mongodb_uri, workdir=workdir) as stack:
        yield stack
