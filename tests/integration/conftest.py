"""Integration tier: a real Kafka broker and a real Postgres, started by ./stack for the tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.dbt_harness import Dbt
from tests.integration.pipeline_harness import Pipeline
from tests.support.ephemeral import EphemeralStack


@pytest.fixture(scope="package")
def stack():
    s = EphemeralStack(["postgres", "kafka"], {"CONSUMER_SESSION_TIMEOUT_MS": "3000"})
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture
def pipeline(stack, request):
    p = Pipeline(stack, request.node.name)
    yield p
    p.close()


@pytest.fixture(scope="module")
def dsn(stack) -> str:
    """The owner's connection string to the tier's Postgres."""
    return stack.owner_dsn()


@pytest.fixture(scope="module")
def dbt(stack, tmp_path_factory) -> Iterator[Dbt]:
    """dbt on the tier's Postgres, its target and logs in a folder of the module's."""
    dbt = Dbt(stack, tmp_path_factory.mktemp("dbt"))
    yield dbt
    dbt.close()
