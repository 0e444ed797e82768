"""Real servers only: REDIS_URL when set, else the bundled valkey-server; plus a 3-master
cluster for the contract suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from helpers import Api, claim_database, setup_shop

from api import create_app
from api.auth import Role, create_key
from engine import Engine, Settings, connect
from engine.cluster import EmbeddedCluster
from engine.embedded import EmbeddedValkey
from engine.store import Store


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


POSTGRES = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _postgres_schema() -> tuple[Any, str] | None:
    """A fresh schema in the test database, or None when PostgreSQL is not reachable."""
    try:
        admin = await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        if os.environ.get("STOCKGUARD_REQUIRE_POSTGRES"):
            raise
        return None
    schema = f"sg_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE SCHEMA {schema}")
    return admin, schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        store = Store.from_url(f"sqlite:///{tmp_path}/ledger.db")
        await store.open()
        yield store
        await store.close()
        return
    found = await _postgres_schema()
    if found is None:
        pytest.skip("PostgreSQL is not reachable (CI requires it)")
    admin, schema = found
    sep = "&" if "?" in POSTGRES else "?"
    store = Store.from_url(f"{POSTGRES}{sep}options={quote(f'-csearch_path={schema}')}")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def api(client: Any, redis_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The HTTP app on a flushed database and a SQLite ledger, with one key per role."""
    settings = Settings(redis_url=redis_url, database_url=f"sqlite:///{tmp_path}/ledger.db")
    app = create_app(settings, access_log=False)
    async with app.router.lifespan_context(app):
        keys = {
            role.value: (await create_key(app.state.store, role.value, role))[0] for role in Role
        }
        await app.state.keys.load()
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {keys['operator']}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://stockguard.test", headers=headers
        ) as http:
            yield Api(app, http, keys)


@pytest.fixture
async def api_shop(api: Api) -> Api:
    """The API over setup_shop's catalog: wh1, wh2, store; web, amazon, pos; SKUs A, B, C."""
    await setup_shop(api.engine)
    return api
