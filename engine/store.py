"""The SQL ledger: SQLite (WAL) by default, PostgreSQL in production, chosen by URL scheme.

Every insert is idempotent on the row's id, so the writer may write an outbox
entry again after a crash (between commit and acknowledgement) and nothing is
duplicated. One `write` is one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import msgspec

from .ledger import CatalogRow, HoldEventRow, MoveRow, OversellRow, Rows, SkuSettingsRow

DEFAULT_URL = "sqlite:///./stockguard-data/ledger.db"

# Each migration runs once, in order, and is recorded in schema_migrations.
MIGRATIONS = (
    """CREATE TABLE moves (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, sku TEXT NOT NULL, location TEXT NOT NULL,
        qty BIGINT NOT NULL, on_hand_delta BIGINT NOT NULL, committed_delta BIGINT NOT NULL,
        reason TEXT NOT NULL, actor TEXT NOT NULL, reference TEXT, channel TEXT, hold_id TEXT,
        at_ms BIGINT NOT NULL)""",
    "CREATE INDEX moves_sku_location ON moves (sku, location)",
    """CREATE TABLE hold_events (
        id TEXT PRIMARY KEY, hold_id TEXT NOT NULL, part INTEGER NOT NULL, event TEXT NOT NULL,
        channel TEXT NOT NULL,
        state TEXT NOT NULL, expires_at_ms BIGINT NOT NULL, lines TEXT NOT NULL,
        parts TEXT NOT NULL, at_ms BIGINT NOT NULL, customer TEXT, reference TEXT)""",
    "CREATE INDEX hold_events_hold ON hold_events (hold_id, part)",
    "CREATE TABLE catalog (version BIGINT PRIMARY KEY, doc TEXT NOT NULL, at_ms BIGINT NOT NULL)",
    """CREATE TABLE sku_settings (
        id TEXT PRIMARY KEY, sku TEXT NOT NULL, settings TEXT NOT NULL, at_ms BIGINT NOT NULL)""",
    "CREATE INDEX sku_settings_sku ON sku_settings (sku, at_ms)",
    """CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL, revoked_ms BIGINT)""",
    "CREATE INDEX moves_at ON moves (at_ms, id)",
    "ALTER TABLE moves ADD COLUMN pos BIGINT NOT NULL DEFAULT 0",
    "CREATE INDEX moves_order ON moves (at_ms, pos, id)",
    "ALTER TABLE hold_events ADD COLUMN sale TEXT",
    "ALTER TABLE hold_events ADD COLUMN sale_limit BIGINT",
    "ALTER TABLE hold_events ADD COLUMN customer_key TEXT",
    """CREATE TABLE oversells (
        id TEXT PRIMARY KEY, sku TEXT NOT NULL, channel TEXT NOT NULL, qty BIGINT NOT NULL,
        ats BIGINT NOT NULL, shortfall BIGINT NOT NULL, unfilled BIGINT NOT NULL,
        at_ms BIGINT NOT NULL, reference TEXT)""",
)


class ApiKeyRow(msgspec.Struct, frozen=True):
    """An API key as stored: only the SHA-256 of the secret, never the secret."""

    id: str
    name: str
    role: str
    hash: str
    created_ms: int
    revoked_ms: int | None = None


_TABLES: tuple[tuple[str, type[msgspec.Struct]], ...] = (
    ("moves", MoveRow),
    ("hold_events", HoldEventRow),
    ("catalog", CatalogRow),
    ("sku_settings", SkuSettingsRow),
    ("oversells", OversellRow),
)


def insert_sql(table: str, row_type: type[msgspec.Struct], mark: str) -> str:
    """The idempotent INSERT of one row type; `mark` is the driver's placeholder."""
    names = [field.name for field in msgspec.structs.fields(row_type)]
    values = ", ".join([mark] * len(names))
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({values}) ON CONFLICT DO NOTHING"


def _statements(rows: Rows, mark: str) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """(INSERT, parameter tuples) for each table that has rows."""
    batches = rows.tables()
    return [
        (insert_sql(table, row_type, mark), [msgspec.structs.astuple(r) for r in batch])
        for (table, row_type), batch in zip(_TABLES, batches, strict=True)
        if batch
    ]


# Reads for rebuild and reconcile. `?` marks a parameter; PostgresStore turns it into %s.
_HOLD_COLUMNS = ", ".join(field.name for field in msgspec.structs.fields(HoldEventRow))
_RANKED_HOLD_EVENTS = f"""WITH ranked AS (
        SELECT {_HOLD_COLUMNS},
            RANK() OVER (PARTITION BY hold_id, part ORDER BY at_ms DESC) AS r FROM hold_events),
    kept AS (SELECT DISTINCT hold_id FROM ranked WHERE r = 1 AND (state = 'held' OR at_ms >= ?))
    SELECT {_HOLD_COLUMNS} FROM ranked WHERE hold_id IN (SELECT hold_id FROM kept) AND """


def _outbox_position(row_id: str) -> tuple[int, int, int]:
    """Orders rows of one partition's outbox: ids are `<partition>:<ms>-<seq>/<index>`."""
    entry, index = row_id.split(":", 1)[1].rsplit("/", 1)
    ms, seq = entry.split("-")
    return int(ms), int(seq), int(index)


_Row = TypeVar("_Row", HoldEventRow, SkuSettingsRow)


def _latest(rows: list[_Row], key: Callable[[_Row], Any]) -> list[_Row]:
    """One row per key: the newest by at_ms, then by outbox position (ties in one ms)."""
    latest: dict[Any, _Row] = {}
    for row in rows:
        seen = latest.get(key(row))
        order = (row.at_ms, _outbox_position(row.id))
        if seen is None or order > (seen.at_ms, _outbox_position(seen.id)):
            latest[key(row)] = row
    return list(latest.values())


class Store:
    """A ledger database; subclasses speak SQLite or PostgreSQL."""

    url: str

    @staticmethod
    def from_url(url: str = DEFAULT_URL) -> Store:
        """`sqlite:///relative/path.db`, `sqlite:////absolute.db` or `postgresql://...`."""
        scheme = urlparse(url).scheme
        if scheme == "sqlite":
            return SqliteStore(url)
        if scheme in ("postgres", "postgresql"):
            return PostgresStore(url)
        raise ValueError(f"DATABASE_URL must start with sqlite:// or postgresql://, got {url!r}")

    async def open(self) -> None:
        """Connects and applies the migrations not applied yet."""
        raise NotImplementedError

    async def write(self, rows: Rows) -> int:
        """Inserts the rows in one transaction; returns how many were new."""
        raise NotImplementedError

    async def count(self, table: str) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every row of one read; `?` marks each parameter."""
        raise NotImplementedError

    async def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write in its own transaction; returns the rows it changed."""
        raise NotImplementedError

    # -- API keys ----------------------------------------------------------------------------

    async def add_key(self, key: ApiKeyRow) -> None:
        await self._execute(insert_sql("api_keys", ApiKeyRow, "?"), msgspec.structs.astuple(key))

    async def api_keys(self) -> list[ApiKeyRow]:
        """Every key, revoked ones included, oldest first."""
        names = ", ".join(ApiKeyRow.__struct_fields__)
        rows = await self._fetch(f"SELECT {names} FROM api_keys ORDER BY created_ms, id")
        return [ApiKeyRow(*row) for row in rows]

    async def revoke_key(self, key_id: str, at_ms: int) -> bool:
        """Revokes a live key; False if there is no such live key."""
        sql = "UPDATE api_keys SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL"
        return await self._execute(sql, (at_ms, key_id)) > 0

    # -- the moves list --------------------------------------------------------------------

    async def moves_page(
        self,
        *,
        after: tuple[int, int, str] | None = None,
        limit: int = 100,
        sku: str | None = None,
        location: str | None = None,
        kind: str | None = None,
    ) -> list[MoveRow]:
        """Moves in commit order, after a position (at_ms, pos, id), optionally of one SKU,
        location or kind."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("sku", sku), ("location", location), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if after is not None:
            where.append("(at_ms, pos, id) > (?, ?, ?)")
            params += list(after)
        names = ", ".join(MoveRow.__struct_fields__)
        order = "ORDER BY at_ms, pos, id"  # commit order within a partition
        sql = f"SELECT {names} FROM moves WHERE {' AND '.join(where)} {order} LIMIT ?"
        return [MoveRow(*row) for row in await self._fetch(sql, (*params, limit))]

    async def oversells(self, since_ms: int = 0) -> list[OversellRow]:
        """Channel oversells recorded since since_ms, oldest first."""
        columns = ", ".join(f.name for f in msgspec.structs.fields(OversellRow))
        rows = await self._fetch(
            f"SELECT {columns} FROM oversells WHERE at_ms >= ? ORDER BY at_ms, id", (since_ms,)
        )
        return [OversellRow(*row) for row in rows]

    async def oversell_totals(self) -> list[tuple[str, int, int]]:
        """(channel, order lines oversold, units short) over the whole ledger."""
        found = await self._fetch(
            "SELECT channel, COUNT(*), SUM(shortfall) FROM oversells GROUP BY channel"
        )
        return [(channel, int(n), int(units)) for channel, n, units in found]

    async def channel_sales(self, since_ms: int) -> list[tuple[str, str, int, int]]:
        """(sku, channel, committed_delta, at_ms) of channels' sale and cancel moves since
        since_ms, in commit order."""
        found = await self._fetch(
            "SELECT sku, channel, committed_delta, at_ms FROM moves WHERE at_ms >= ? "
            "AND channel IS NOT NULL AND kind IN ('sale', 'cancel') ORDER BY at_ms, pos, id",
            (since_ms,),
        )
        return [(sku, channel, int(delta), int(at)) for sku, channel, delta, at in found]

    async def stock_totals(self, sku: str | None = None) -> list[tuple[str, str, int, int]]:
        """(sku, location, on_hand, committed) summed over every move, of one SKU or all."""
        where, params = ("WHERE sku = ?", (sku,)) if sku is not None else ("", ())
        found = await self._fetch(
            "SELECT sku, location, SUM(on_hand_delta), SUM(committed_delta) FROM moves "
            f"{where} GROUP BY sku, location ORDER BY sku, location",
            params,
        )
        return [
            (sku_, location, int(on_hand), int(committed))
            for sku_, location, on_hand, committed in found
        ]

    async def moves_since(self, at_ms: int) -> list[tuple[str, str, str, int]]:
        """(id, kind, sku, at_ms) of the moves recorded at or after at_ms."""
        found = await self._fetch(
            "SELECT id, kind, sku, at_ms FROM moves WHERE at_ms >= ?", (at_ms,)
        )
        return [(id_, kind, sku, int(at)) for id_, kind, sku, at in found]

    async def latest_catalog(self) -> CatalogRow | None:
        """The catalog of the highest version, if any was recorded."""
        found = await self._fetch(
            "SELECT version, doc, at_ms FROM catalog ORDER BY version DESC LIMIT 1"
        )
        return CatalogRow(*found[0]) if found else None

    async def latest_sku_settings(self) -> list[SkuSettingsRow]:
        """Each SKU's settings as last recorded (by at_ms, then outbox position)."""
        found = await self._fetch(
            "SELECT id, sku, settings, at_ms FROM (SELECT id, sku, settings, at_ms, "
            "RANK() OVER (PARTITION BY sku ORDER BY at_ms DESC) AS r FROM sku_settings) s "
            "WHERE r = 1"
        )
        return _latest([SkuSettingsRow(*row) for row in found], lambda row: row.sku)

    async def latest_hold_events(self, since_ms: int = 0) -> list[HoldEventRow]:
        """The last event of each part of every hold with a part held or finished since since_ms.

        The last event (by at_ms, then outbox position) carries the part's record as it stood.
        """
        found = await self._fetch(_RANKED_HOLD_EVENTS + "r = 1", (since_ms,))
        latest = _latest([HoldEventRow(*row) for row in found], lambda row: (row.hold_id, row.part))
        # SQL ranks by at_ms only, so events tied in one ms let a few holds too many through.
        kept = {row.hold_id for row in latest if row.state == "held" or row.at_ms >= since_ms}
        return [row for row in latest if row.hold_id in kept]

    async def sale_hold_states(self) -> list[HoldEventRow]:
        """The last event of each part of every flash-sale hold, however old: what the
        customers' limits count (held and confirmed units) is rebuilt from them."""
        sql = f"""WITH ranked AS (
            SELECT {_HOLD_COLUMNS},
                RANK() OVER (PARTITION BY hold_id, part ORDER BY at_ms DESC) AS r
            FROM hold_events WHERE sale IS NOT NULL)
            SELECT {_HOLD_COLUMNS} FROM ranked WHERE r = 1"""
        rows = [HoldEventRow(*row) for row in await self._fetch(sql)]
        return _latest(rows, lambda row: (row.hold_id, row.part))

    async def placed_hold_events(self, since_ms: int = 0) -> list[HoldEventRow]:
        """The 'placed' event of each part of (at least) the holds latest_hold_events returns.

        Only the latest per part: a hold id may be used again once its record is forgotten.
        """
        found = await self._fetch(_RANKED_HOLD_EVENTS + "event = 'placed'", (since_ms,))
        rows = [HoldEventRow(*row) for row in found]
        return _latest(rows, lambda row: (row.hold_id, row.part))


class SqliteStore(Store):
    """SQLite in WAL mode; calls run in a worker thread so the event loop never blocks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; see README
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
        for version, statement in enumerate(MIGRATIONS, start=1):
            if version not in done:
                db.execute("BEGIN IMMEDIATE")
                db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?)", (version,))
                db.execute("COMMIT")
        return db

    async def write(self, rows: Rows) -> int:
        async with self._lock:
            return await asyncio.to_thread(self._write, _statements(rows, "?"))

    def _write(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> int:
        db = self._require()
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, values in statements:
                db.executemany(sql, values)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return db.total_changes - before

    async def count(self, table: str) -> int:
        async with self._lock:
            cursor = await asyncio.to_thread(
                self._require().execute, f"SELECT count(*) FROM {table}"
            )
            (n,) = cursor.fetchone()
            return int(n)

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await asyncio.to_thread(self._fetchall, sql, params)

    def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return list(self._require().execute(sql, params).fetchall())

    async def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        async with self._lock:
            cursor = await asyncio.to_thread(self._require().execute, sql, params)
            return int(cursor.rowcount)

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None


class PostgresStore(Store):
    """PostgreSQL through psycopg 3 (installed with `pip install 'stockguard[postgres]'`).

    One connection, one operation at a time: tasks that share the store (two writers in
    one process, the API's requests) queue for it, so no transaction interleaves another.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            import psycopg
        except ImportError as error:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "PostgreSQL needs psycopg: pip install 'stockguard[postgres]'"
            ) from error
        self._db = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        async with self._db.transaction():
            # One migrator at a time, however many writers start together.
            await self._db.execute("SELECT pg_advisory_xact_lock(7301962)")
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)"
            )
            cursor = await self._db.execute("SELECT version FROM schema_migrations")
            done = {v for (v,) in await cursor.fetchall()}
            for version, statement in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    await self._db.execute(statement)
                    await self._db.execute("INSERT INTO schema_migrations VALUES (%s)", (version,))

    async def _connection(self) -> Any:
        # After an outage the old connection is closed or broken: connect again, lazily,
        # so the writer's retry is all it takes to recover.
        if self._db is None or self._db.closed or self._db.broken:
            import psycopg

            if self._db is not None:
                await self._db.close()
            self._db = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=5
            )
        return self._db

    async def write(self, rows: Rows) -> int:
        new = 0
        async with self._lock:
            db = await self._connection()
            async with db.transaction():
                for sql, values in _statements(rows, "%s"):
                    async with db.cursor() as cursor:
                        await cursor.executemany(sql, values)
                        new += max(cursor.rowcount, 0)
        return new

    async def count(self, table: str) -> int:
        rows = await self._fetch(f"SELECT count(*) FROM {table}")
        return int(rows[0][0])

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            cursor = await (await self._connection()).execute(sql.replace("?", "%s"), params)
            return list(await cursor.fetchall())

    async def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        async with self._lock:
            cursor = await (await self._connection()).execute(sql.replace("?", "%s"), params)
            return int(cursor.rowcount)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
