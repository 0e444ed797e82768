"""`stockguard serve` end to end: the real command in its own process group, with its
embedded valkey-server, writer and sweeper, driven over HTTP by api.client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from api import client as sg
from api.client import Client
from engine import HoldState
from engine.models import Hold, LocationStock, StockLevel

STOCKGUARD = [sys.executable, "-m", "engine.cli"]
T = TypeVar("T")


def _env() -> dict[str, str]:
    """This environment without any pointer to other servers or settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL") and not k.startswith("STOCKGUARD_")
    }


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    key: str | None  # the operator key printed at first start
    log: Path

    async def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM to serve alone, as a service manager sends it; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout_s)


async def _banner(out: Path, proc: subprocess.Popen[bytes], log: Path) -> tuple[str, str | None]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = out.read_text()
        if (url := re.search(r"stockguard serving (http://\S+)", text)) and "  data " in text:
            key = re.search(r"^\s+(sg_[0-9a-f]+_[\w-]+)\s*$", text, re.MULTILINE)
            return url[1], key[1] if key else None
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"no banner within 30 s:\n{out.read_text()}\n{log.read_text()}")


@contextlib.asynccontextmanager
async def serving(
    data_dir: Path, *, main_flag: bool = False, extra: tuple[str, ...] = ()
) -> AsyncIterator[Server]:
    """A running `stockguard serve --port 0` over data_dir (given to the main command with
    main_flag: `stockguard --data-dir D serve`); killed with its group if left running."""
    runs = len(list(data_dir.parent.glob(f"{data_dir.name}-serve-*.out")))
    out = data_dir.parent / f"{data_dir.name}-serve-{runs}.out"
    log, where = out.with_suffix(".log"), ["--data-dir", str(data_dir)]
    main, given = (where, []) if main_flag else ([], where)
    with out.open("wb") as stdout, log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*STOCKGUARD, *main, "serve", "--port", "0", *given, *extra],
            stdout=stdout,
            stderr=stderr,
            env=_env(),
            cwd=data_dir.parent,
            start_new_session=True,
        )
    try:
        url, key = await _banner(out, proc, log)
        async with httpx.AsyncClient(base_url=url) as http:
            ready = await eventually(lambda: _ready(http), timeout_s=30)
        assert ready, log.read_text()
        yield Server(proc, url, key, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _ready(http: httpx.AsyncClient) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return (await http.get("/readyz")).status_code == 200
    return False


async def eventually(probe: Callable[[], Awaitable[T]], timeout_s: float = 10) -> T:
    """The probe's first truthy result, polled until timeout_s; else its last result."""
    deadline = time.monotonic() + timeout_s
    while not (result := await probe()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return result


def ledger(data_dir: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(data_dir / "ledger.db")) as db:
        return db.execute(sql, params).fetchall()


def at(level: StockLevel, location: str) -> LocationStock:
    return next(row for row in level.locations if row.location == location)


async def define_shop(ops: Client, skus: dict[str, int]) -> None:
    """wh1 and wh2; web sells from both; each SKU received at wh1."""
    for location in ("wh1", "wh2"):
        await ops.define_location(location)
    await ops.define_channel("web", ["wh1", "wh2"])
    for sku, qty in skus.items():
        await ops.define_sku(sku)
        await ops.receive(sku, "wh1", qty, reference=f"po-{sku}")


def keys_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*STOCKGUARD, "--data-dir", str(data_dir), "keys", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=30)


# -- the tests ----------------------------------------------------------------------------


async def test_holds_end_to_end_then_sigterm_drains_and_a_restart_keeps_state(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with serving(data) as server:
        assert server.key is not None, "the first start prints an operator key"
        key = server.key
        async with Client(server.url, key) as c:
            await define_shop(c, {"A": 10, "B": 5})
            sold = await c.confirm((await c.hold("web", {"A": 2}, ttl_ms=60_000)).id, "o-1")
            assert sold.state is HoldState.CONFIRMED and sold.reference == "o-1"
            walked = await c.release((await c.hold("web", [("A", 1), ("B", 2)], ttl_ms=60_000)).id)
            assert walked.state is HoldState.RELEASED
            lapsing = await c.hold("web", {"A": 3}, ttl_ms=300)
            assert at(await c.stock("A"), "wh1").held == 3
            await asyncio.sleep(0.4)
            assert (await c.get_hold(lapsing.id)).state is HoldState.EXPIRED
            assert at(await c.stock("A"), "wh1") == LocationStock("wh1", 10, 2, 0, 8)
            kept = await c.hold("web", {"A": 1}, ttl_ms=600_000, idempotency_key="cart-1")
            again = await c.hold("web", {"A": 1}, ttl_ms=600_000, idempotency_key="cart-1")
            assert again == kept and at(await c.stock("A"), "wh1").held == 1

        def expired() -> list[tuple[object, ...]]:
            sql = "SELECT 1 FROM hold_events WHERE hold_id = ? AND event = 'expired'"
            return ledger(data, sql, lapsing.id)

        # the sweeper settles the lapsed hold (its event), and the writer persists it
        assert await eventually(lambda: asyncio.to_thread(expired))
        async with Client(server.url, key) as c:  # moves just before SIGTERM: drained
            await asyncio.gather(*(c.receive("B", "wh2", 1, reference=f"r{n}") for n in range(50)))
        assert await server.stop() == 0

    receives = ledger(data, "SELECT sku, location, qty, reference FROM moves WHERE kind='receive'")
    late = [("B", "wh2", 1, f"r{n}") for n in range(50)]
    assert sorted(receives) == sorted([("A", "wh1", 10, "po-A"), ("B", "wh1", 5, "po-B"), *late])
    sales = ledger(data, "SELECT sku, committed_delta, hold_id FROM moves WHERE kind='sale'")
    assert sales == [("A", 2, sold.id)]
    events = ledger(data, "SELECT hold_id, event FROM hold_events")
    assert {(sold.id, "placed"), (sold.id, "confirmed")} <= set(events)
    assert {(walked.id, "placed"), (walked.id, "released")} <= set(events)
    assert {(lapsing.id, "placed"), (lapsing.id, "expired")} <= set(events)
    assert [e for e in events if e[0] == kept.id] == [(kept.id, "placed")]  # the replay added none

    async with serving(data) as server:
        assert server.key is None, "keys exist: no new one is printed"
        async with Client(server.url, key) as c:
            assert at(await c.stock("A"), "wh1") == LocationStock("wh1", 10, 2, 1, 7)
            assert at(await c.stock("B"), "wh1") == LocationStock("wh1", 5, 0, 0, 5)
            assert at(await c.stock("B"), "wh2").on_hand == 50
            assert (await c.get_hold(sold.id)).state is HoldState.CONFIRMED
            assert await c.hold("web", {"A": 1}, ttl_ms=600_000, idempotency_key="cart-1") == kept
        assert await server.stop() == 0


async def test_1000_concurrent_holds_over_http_sell_exactly_the_100_units(tmp_path: Path) -> None:
    async with serving(tmp_path / "data") as server:
        assert server.key is not None
        async with Client(server.url, server.key, timeout=60) as c:
            await define_shop(c, {"HOT": 100})

            async def buy(n: int) -> Hold | sg.ProblemError:
                try:
                    return await c.hold("web", {"HOT": 1}, ttl_ms=600_000, customer=f"c{n}")
                except sg.ProblemError as error:
                    return error

            outcomes = await asyncio.gather(*(buy(n) for n in range(1000)))
            holds = [o for o in outcomes if isinstance(o, Hold)]
            refused = [o for o in outcomes if isinstance(o, sg.InsufficientStockError)]
            assert len(holds) == 100 and len({h.id for h in holds}) == 100
            assert len(refused) == 900, {type(o).__name__ for o in outcomes}
            for error in refused:
                assert (error.status, error.sku, error.requested) == (409, "HOT", 1)
                assert isinstance(error.available, int) and 0 <= error.available < 1
            assert at(await c.stock("HOT"), "wh1") == LocationStock("wh1", 100, 0, 100, 0)
            assert (await c.ats("web", ["HOT"])).ats == {"HOT": 0}
        assert await server.stop() == 0


async def test_keys_cli_creates_lists_and_revokes_keys_of_a_running_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with serving(data, main_flag=True) as server:
        created = keys_cli(data, "create", "--role", "checkout", "--name", "till-1")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        key_id = key.split("_")[1]
        assert re.fullmatch(r"sg_[0-9a-f]{8}_[\w-]{40,}", key) and key_id in created.stderr
        listed = keys_cli(data, "list")
        row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
        assert row.split()[1] == "checkout" and row.endswith("till-1")

        async with Client(server.url, key, retries=0) as till:

            async def works() -> bool:
                try:
                    await till.catalog()
                    return True
                except sg.UnauthorizedError:
                    return False

            assert await eventually(works, timeout_s=3), "a new key works at once"
            with pytest.raises(sg.ForbiddenError):
                await till.receive("A", "wh1", 1)
            revoked = keys_cli(data, "revoke", key_id)
            assert revoked.returncode == 0, revoked.stderr

            async def refused() -> bool:
                return not await works()

            assert await eventually(refused, timeout_s=3.5), "a revoked key stops within ~3 s"
        row = next(line for line in keys_cli(data, "list").stdout.splitlines() if key_id in line)
        assert row.split()[4] != "-"  # its revoked time
        assert keys_cli(data, "revoke", key_id).returncode == 1  # no live key by that id
        assert await server.stop() == 0


async def test_a_group_sigterm_waits_for_requests_in_flight_before_the_drain(
    tmp_path: Path,
) -> None:
    """systemd and `kill -- -PGID` signal every process of serve: the writer must still
    persist what the requests in flight at that moment commit."""
    data, body_sent = tmp_path / "data", asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"location": "wh1", '
        await body_sent.wait()
        yield b'"qty": 7, "reference": "in-flight"}'

    async with serving(data) as server:
        assert server.key is not None
        async with Client(server.url, server.key) as c:
            await define_shop(c, {"A": 1})
        auth = {"Authorization": f"Bearer {server.key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as http:
            request = asyncio.create_task(http.post("/v1/stock/A/receive", content=slow_body()))
            await asyncio.sleep(0.3)  # the headers are in: the request is in flight
            os.killpg(server.proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.5)  # time for a writer that obeyed it to drain and leave
            body_sent.set()
            response = await request
        assert response.status_code == 200 and response.json()["on_hand"] == 8
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
    sql = "SELECT qty FROM moves WHERE kind = 'receive' AND reference = 'in-flight'"
    assert ledger(data, sql) == [(7,)]


async def test_two_workers_share_the_socket_and_report_metrics_together(tmp_path: Path) -> None:
    async with serving(tmp_path / "data", extra=("--workers", "2")) as server:
        assert server.key is not None
        async with Client(server.url, server.key) as ops:
            await define_shop(ops, {"A": 50})
            holds = await asyncio.gather(
                *(ops.hold("web", {"A": 1}, ttl_ms=60_000) for _ in range(40))
            )
            assert len({h.id for h in holds}) == 40
            assert at(await ops.stock("A"), "wh1").held == 40
        async with httpx.AsyncClient(base_url=server.url) as http:
            text = (await http.get("/metrics")).text
        placed = re.search(
            r'stockguard_hold_outcomes_total\{action="place",outcome="ok"\} (\S+)', text
        )
        assert placed is not None and float(placed[1]) == 40  # both workers' samples, summed
        # Other commands on the same data dir share the running serve's Valkey.
        command = [*STOCKGUARD, "--data-dir", str(tmp_path / "data"), "audit", "--wait-s", "10"]
        audit = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, env=_env(), timeout=60
        )
        assert audit.returncode == 0 and audit.stdout.endswith("audit: ok\n"), audit
        assert await server.stop() == 0
