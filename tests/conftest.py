"""Real servers only: REDIS_URL when set, else the bundled valkey-server; plus a 3-master
cluster for the contract suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from helpers import claim_database, setup_shop

from engine import Engine, Settings, connect
from engine.cluster import EmbeddedCluster
from engine.embedded import EmbeddedValkey


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server.url


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
async def single_client(redis_url: str) -> AsyncIterator[Any]:
    client = await connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def cluster_client(cluster_url: str) -> AsyncIterator[Any]:
    client = await connect(cluster_url)
    yield client
    await client.aclose()


@pytest.fixture
async def client(single_client: Any, redis_url: str) -> Any:
    """The single-node client, on a freshly flushed database."""
    await claim_database(single_client, redis_url)
    return single_client


@pytest.fixture
async def fresh_cluster_client(cluster_client: Any) -> Any:
    await cluster_client.flushall()
    return cluster_client


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def any_client(request: pytest.FixtureRequest) -> Any:
    """Each contract test runs on a single node and on a 3-master cluster."""
    name = "client" if request.param == "single" else "fresh_cluster_client"
    return request.getfixturevalue(name)


def make_engine(client: Any, **settings: Any) -> Engine:
    return Engine(client, Settings(**settings))


@pytest.fixture
async def engine(any_client: Any) -> Engine:
    """An Engine with no catalog, on a single node and on a cluster."""
    return make_engine(any_client)


@pytest.fixture
async def shop(engine: Engine) -> Engine:
    """Two locations, and channels: web sells from wh1 then wh2, pos from store only."""
    await setup_shop(engine)
    return engine
