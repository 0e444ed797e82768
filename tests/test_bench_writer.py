"""`stockguard bench writer` in small: the printed lines, and every move in every store."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import psycopg

from engine.bench_writer import bench_writer

POSTGRES = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")  # conftest's
MOVES = 2_000
RATE = re.compile(r"^ *(sqlite|postgres) (writer|store-write|raw-insert) +[\d,]+ moves/s$")
LAG = re.compile(
    r"^writer lag at [\d,]+ moves/s \(target [\d,]+\) for [\d.]+ s, \d+ samples: "
    r"p50 \d+ ms, p99 \d+ ms, max \d+ ms$"
)


async def _postgres_reachable() -> bool:
    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES, connect_timeout=3)
    except psycopg.OperationalError:
        return False
    await conn.close()
    return True


async def test_bench_writer_prints_rates_lag_and_ratios_last(client: Any, tmp_path: Path) -> None:
    lines: list[str] = []
    results = await bench_writer(
        client,
        sqlite_dir=tmp_path,
        postgres_dsn=POSTGRES,
        moves=MOVES,
        out=lines.append,
        rounds=1,
        lag_rate=1_000,
        lag_seconds=0.5,
    )
    kinds = ["sqlite", "postgres"] if await _postgres_reachable() else ["sqlite"]
    ratios = [f"writer/raw-insert {kind} ratio: " for kind in kinds]
    tail = lines[-len(kinds) :]
    for prefix, line in zip(ratios, tail, strict=True):
        assert line.startswith(prefix) and re.fullmatch(r"\d+\.\d\d", line[len(prefix) :]), line
    rates = [m.groups() for line in lines if (m := RATE.match(line))]
    paths = ("writer", "store-write", "raw-insert")
    assert rates == [(kind, path) for kind in kinds for path in paths]
    assert sum(bool(LAG.match(line)) for line in lines) == 1
    for kind in kinds:
        for path in paths:
            assert results[f"{kind} {path} rows"] == MOVES  # every move, counted in the store
            assert results[f"{kind} {path}"] > 0
    assert results["lag p99 ms"] >= results["lag p50 ms"] >= 0
    assert list(tmp_path.iterdir()) == []  # its SQLite files are gone
    assert await client.dbsize() == 0  # and its Redis data
