"""Store outages: the SQL store goes away while operations go on, then comes back. The writer
retries with backoff, nothing is lost or dead-lettered, and the lag recovers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pytest
from conftest import POSTGRES, _postgres_schema
from helpers import setup_shop

from engine import Engine, keys
from engine.store import Store
from engine.writer import Writer

pytestmark = pytest.mark.slow


class Proxy:
    """A TCP proxy to PostgreSQL that the test can take down and bring back on one port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._pipes):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._pipes -= {writer, up_writer}


async def _through_outage(client: Any, store: Store, outage: Any) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    writer = Writer(client, store)
    stop = asyncio.Event()
    running = asyncio.create_task(writer.run(stop, idle_ms=20))
    made = 0
    try:
        async with outage():
            for _ in range(60):
                await asyncio.gather(*(engine.receive("A", "wh1", 1) for _ in range(10)))
                made += 10
                await asyncio.sleep(0.05)
            assert (await writer.lag()).pending > 0, "the outage held nothing back"
        deadline = time.monotonic() + 10  # well inside the 30 s XAUTOCLAIM idle time
        while (await writer.lag()).pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await writer.lag()).pending == 0
    finally:
        stop.set()
        await running
    assert await store.count("moves") == made
    for p in range(keys.PARTITIONS):
        assert await client.xlen(keys.dead_letters(p)) == 0


@pytest.mark.postgres
async def test_postgres_going_away_and_back(client: Any) -> None:
    found = await _postgres_schema()
    if found is None:
        pytest.skip("PostgreSQL is not reachable (CI requires it)")
    admin, schema = found
    target = urlparse(POSTGRES)
    proxy = Proxy((target.hostname or "127.0.0.1", target.port or 5432))
    await proxy.up()
    url = target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}").geturl()
    store = Store.from_url(f"{url}?options={quote(f'-csearch_path={schema}')}")
    await store.open()

    @contextlib.asynccontextmanager
    async def outage() -> Any:
        await asyncio.sleep(0.3)
        await proxy.down()
        yield
        await proxy.up()

    try:
        await _through_outage(client, store, outage)
    finally:
        await store.close()
        await proxy.down()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_sqlite_locked_longer_than_its_busy_timeout(client: Any, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store = Store.from_url(f"sqlite:///{path}")
    await store.open()

    @contextlib.asynccontextmanager
    async def outage() -> Any:
        # Another process holding the database longer than the writer waits for it.
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")
        yield
        await asyncio.sleep(6)  # past the 5 s busy_timeout: the writer sees errors, retries
        blocker.execute("COMMIT")
        blocker.close()

    try:
        await _through_outage(client, store, outage)
    finally:
        await store.close()
