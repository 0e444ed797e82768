"""The `stockguard` command, run as a user would, against the test server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import setup_shop

from engine import Engine, HoldState, keys

STOCKGUARD = [sys.executable, "-m", "engine.cli"]


def test_help_lists_every_command() -> None:
    out = subprocess.run([*STOCKGUARD, "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "writer", "sweeper", "bench", "valkey", "cluster"):
        assert command in out.stdout


async def test_demo_runs_against_a_given_server(client: Any, redis_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *STOCKGUARD, "--redis-url", redis_url, "demo", stdout=subprocess.PIPE
    )
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    text = stdout.decode()
    assert "amazon asks for 1 more: refused" in text
    assert "the sweeper settles it: 1 expired" in text
    assert text.rstrip().splitlines()[-1].split()[-1] == "web=10"


def _without_redis_url() -> dict[str, str]:
    """This environment, minus REDIS_URL: a command then starts its embedded server."""
    return {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


def _embedded(data_dir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Runs `stockguard --data-dir data_dir command...` on its embedded server."""
    return subprocess.run(
        [*STOCKGUARD, "--data-dir", str(data_dir), *command],
        capture_output=True,
        text=True,
        env=_without_redis_url(),
        timeout=120,
    )


def test_demo_runs_on_a_scratch_server_and_leaves_the_data_dir_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for _ in range(2):  # the same walk each time: nothing of a run is kept for the next
        out = _embedded(data_dir, "demo")
        assert out.returncode == 0, out.stderr
        assert "on a scratch embedded valkey-server" in out.stdout
        assert "amazon asks for 1 more: refused" in out.stdout
        assert out.stdout.rstrip().splitlines()[-1].split()[-1] == "web=10"
    assert list(data_dir.iterdir()) == []


def test_demo_keep_runs_in_the_data_dir_and_a_second_run_finds_it(tmp_path: Path) -> None:
    for run in ("first", "second"):
        out = _embedded(tmp_path, "demo", "--keep")
        assert out.returncode == 0, (run, out.stderr)
        assert f"embedded valkey-server in {tmp_path}/valkey" in out.stdout
        # The second run counts the stock the first one left back to the same levels.
        assert out.stdout.rstrip().splitlines()[-1].split()[-1] == "web=10"
    assert (tmp_path / "valkey" / "appendonlydir").is_dir()


def test_a_reader_that_stops_early_ends_the_demo_quietly(tmp_path: Path) -> None:
    with subprocess.Popen(
        [*STOCKGUARD, "--data-dir", str(tmp_path), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_without_redis_url(),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"stockguard demo on")  # then, like `head -1`:
        proc.stdout.close()
        assert proc.wait(timeout=120) == 1
        assert proc.stderr.read() == b""


def test_serve_on_a_data_dir_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    from engine.embedded import EmbeddedValkey

    with EmbeddedValkey(tmp_path / "valkey"):  # owned by this process
        out = _embedded(tmp_path, "serve", "--port", "0")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"stockguard: data dir {tmp_path / 'valkey'} is in use by process {os.getpid()}"
    )


async def test_sweeper_settles_expired_holds_and_stops_on_sigterm(
    client: Any, redis_url: str
) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 5)
    proc = await asyncio.create_subprocess_exec(
        *STOCKGUARD,
        "--redis-url",
        redis_url,
        "sweeper",
        "--interval-ms",
        "50",
        stdout=subprocess.PIPE,
    )
    try:
        hold = await engine.hold("web", {"A": 2}, ttl_ms=100)
        holds_key = keys.holds(keys.partition_of(hold.id))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            raw = await client.hget(holds_key, hold.id)
            if '"st":"expired"' in raw:
                break
            await asyncio.sleep(0.05)
        assert (await engine.get_hold(hold.id)).state is HoldState.EXPIRED
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "settled 1 expired holds" in stdout.decode()


async def test_writer_persists_the_outbox_and_stops_on_sigterm(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    ledger = tmp_path / "ledger.db"
    proc = await asyncio.create_subprocess_exec(
        *STOCKGUARD,
        "--redis-url",
        redis_url,
        "writer",
        env={**os.environ, "DATABASE_URL": f"sqlite:///{ledger}"},
        stdout=subprocess.PIPE,
    )
    try:
        for sku in ("A", "B", "C"):
            await engine.receive(sku, "wh1", 3)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ledger.exists() and _moves(ledger) == 3:
                break
            await asyncio.sleep(0.05)
        assert _moves(ledger) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()
    assert proc.returncode == 0


def _moves(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            (n,) = db.execute("SELECT count(*) FROM moves").fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return 0
        return int(n)
