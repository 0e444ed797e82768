"""Settings, built once at the edge; the core never reads os.environ."""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DAY_MS = 24 * 3600 * 1000
# Requests and batched operations allocate many short-lived objects; at Python's default
# gen0 threshold (700) a busy process collects every few requests, and those collections
# were the hold path's p99 tail. Far fewer collections, each no slower, is the usual tuning.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Sets the garbage collector's thresholds for a busy server process."""
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(frozen=True)
class Settings:
    """Where the live state lives and how long the engine remembers things."""

    redis_url: str | None = None  # None: start the embedded Valkey in data_dir
    database_url: str | None = None  # None: SQLite at data_dir/ledger.db
    data_dir: Path = Path("stockguard-data")
    appendfsync: str = "everysec"  # or "always": see README "Durability"
    idempotency_ttl_ms: int = DAY_MS  # how long an operation id replays its first outcome
    finished_retention_ms: int = DAY_MS  # how long finished holds stay readable
    max_batch: int = 32  # most operations sent in one pipeline of script calls
    jemalloc: bool = True  # the embedded Valkey runs on the system's jemalloc, if it has one

    @property
    def ledger_url(self) -> str:
        """DATABASE_URL, or the SQLite ledger next to the embedded server's data."""
        return self.database_url or f"sqlite:///{self.data_dir}/ledger.db"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read STOCKGUARD_* settings, plus REDIS_URL, from the environment."""
        defaults = cls()
        return cls(
            redis_url=environ.get("REDIS_URL") or None,
            database_url=environ.get("DATABASE_URL") or None,
            data_dir=Path(environ.get("STOCKGUARD_DATA_DIR", str(defaults.data_dir))),
            appendfsync=environ.get("STOCKGUARD_APPENDFSYNC", defaults.appendfsync),
            idempotency_ttl_ms=int(
                environ.get("STOCKGUARD_IDEMPOTENCY_TTL_MS", defaults.idempotency_ttl_ms)
            ),
            finished_retention_ms=int(
                environ.get("STOCKGUARD_FINISHED_RETENTION_MS", defaults.finished_retention_ms)
            ),
            max_batch=int(environ.get("STOCKGUARD_MAX_BATCH", defaults.max_batch)),
            jemalloc=environ.get("STOCKGUARD_JEMALLOC", "1").lower() in ("1", "true", "yes", "on"),
        )
