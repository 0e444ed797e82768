"""`stockguard audit`: a clean run after mixed trading passes, and each check catches a
violation planted straight into Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import setup_shop

from engine import Engine, keys
from engine.audit import TITLES, Report, audit, format_text
from engine.channels import inbound
from engine.ids import customer_key
from engine.sales import Sale, Sales
from engine.store import Store
from engine.writer import Writer

STOCKGUARD = [sys.executable, "-m", "engine.cli"]
ALICE = customer_key("alice")


@dataclass
class Shop:
    engine: Engine
    writer: Writer
    live: str  # a multi-part hold still held: A (partition 3) and B (partition 1)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Store]:
    """A SQLite ledger, for the checks the ledger does not decide."""
    store = Store.from_url(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    yield store
    await store.close()


async def drain(writer: Writer) -> None:
    while await writer.step():
        pass


async def trade(client: Any, store: Store) -> Shop:
    """Receipts, sales, shipments, returns, releases, expiries, transfers, a flash sale."""
    engine, writer = Engine(client), Writer(client, store)
    await writer.setup()
    await setup_shop(engine)
    for sku in ("A", "B", "C"):
        await engine.receive(sku, "wh1", 20)
    await engine.receive("C", "store", 5)
    now = int(time.time() * 1000)
    flash = Sale("flash", "web", ("A",), now - 1000, now + 3_600_000, 10.0, 10, 60_000, limit=2)
    await Sales(engine).define(flash)
    sold = await engine.hold("web", {"A": 3, "B": 2}, ttl_ms=60_000)
    await engine.confirm(sold.id, reference="order-1")
    await engine.ship("A", "wh1", 1, reference="order-1")
    await engine.cancel("B", "wh1", 1, reference="order-1")
    await engine.return_units("A", "wh1", 1)
    await engine.release((await engine.hold("amazon", {"C": 2}, ttl_ms=60_000)).id)
    await engine.transfer("C", "wh1", "wh2", 3)
    await engine.adjust("B", "wh1", -1, reason="damaged")
    await engine.count("C", "store", 4)
    live = await engine.hold("web", {"A": 2, "B": 1}, ttl_ms=600_000)
    placed = [
        await engine.hold("web", {"A": 1}, ttl_ms=600_000, customer=customer, sale=("flash", 2))
        for customer in ("alice", "alice", "bob", "carol")
    ]
    await engine.confirm(placed[1].id)  # alice: 1 held, 1 bought
    await engine.release(placed[2].id)  # bob: nothing
    await engine.hold("web", {"A": 1, "C": 1}, ttl_ms=50)  # these two expire, unsettled
    await engine.hold("pos", {"C": 1}, ttl_ms=50)
    await asyncio.sleep(0.1)
    await drain(writer)
    return Shop(engine, writer, live.id)


def failed(report: Report) -> dict[str, list[str]]:
    return {c.name: c.violations for c in report.checks if c.count}


async def test_a_clean_run_passes_after_mixed_trading(client: Any, store: Store) -> None:
    shop = await trade(client, store)
    report = await audit(shop.engine, store, wait_s=5)
    assert failed(report) == {}, format_text(report)
    assert report.ok and [c.name for c in report.checks] == list(TITLES)
    assert report.swept == 3  # the expired parts: A and C of one hold, C of the other
    text = format_text(report)
    assert text.startswith("sweep: settled 3 expired hold(s) first")
    assert text.endswith("audit: ok")
    again = await audit(shop.engine, store, wait_s=0)  # the sweep's events are not written
    assert failed(again) == {"ledger_caught_up": [again.check("ledger_caught_up").violations[0]]}
    assert again.check("ledger_caught_up").violations[0].startswith("ledger behind by 2 entries")


@pytest.mark.cluster
async def test_a_clean_run_passes_on_a_cluster(fresh_cluster_client: Any, ledger: Store) -> None:
    shop = await trade(fresh_cluster_client, ledger)
    report = await audit(shop.engine, ledger, wait_s=5)
    assert failed(report) == {}, format_text(report)


async def run_cli(redis_url: str, store: Store, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *STOCKGUARD,
        "--redis-url",
        redis_url,
        "audit",
        *args,
        stdout=subprocess.PIPE,
        env={**os.environ, "DATABASE_URL": store.url},
    )
    stdout, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode()


async def test_the_command_exits_0_when_clean_and_1_on_a_violation(
    client: Any, redis_url: str, ledger: Store
) -> None:
    shop = await trade(client, ledger)
    status, out = await run_cli(redis_url, ledger, "--wait-s", "0")
    assert status == 0, out
    assert out.rstrip().endswith("audit: ok")
    await drain(shop.writer)  # the sweep's expired events
    await client.hincrby(keys.stock(keys.partition_of("A")), "A:wh2:on_hand", 5)
    status, out = await run_cli(redis_url, ledger, "--wait-s", "0", "--json", "--no-sweep")
    assert status == 1
    report = msgspec.json.decode(out, type=Report)
    assert report.swept is None
    assert failed(report) == {"ledger_matches": ["A@wh2: on_hand 5 in Redis, 0 in the ledger"]}


async def test_oversell_and_negative_levels_are_caught(client: Any, ledger: Store) -> None:
    shop = await trade(client, ledger)
    await shop.engine.sweep()  # so that held counts only live holds, as the audit sees it
    await drain(shop.writer)
    a, b = keys.stock(keys.partition_of("A")), keys.stock(keys.partition_of("B"))
    on_hand, committed, held = map(
        int, await client.hmget(a, "A:wh1:on_hand", "A:wh1:committed", "A:wh1:held")
    )
    extra = on_hand - committed - held + 1
    await client.hincrby(a, "A:wh1:held", extra)
    await client.hset(b, "B:wh2:committed", -1)
    report = await audit(shop.engine, ledger, wait_s=0)
    assert report.check("no_oversell").violations == [
        f"A@wh1: committed {committed} + held {held + extra} > on_hand {on_hand}",
        "B@wh2: negative: on_hand 0, committed -1, held 0",
    ]
    assert report.check("held_counters").violations == [
        f"A@wh1: held {held + extra}, but held records hold {held}"
    ]
    assert not report.ok


async def test_held_counters_must_equal_the_held_records(client: Any, ledger: Store) -> None:
    shop = await trade(client, ledger)
    await client.hincrby(keys.stock(keys.partition_of("C")), "C:pos:channel_held", 1)
    report = await audit(shop.engine, ledger, wait_s=0)
    assert failed(report) == {"held_counters": ["C@pos: channel_held 1, but held records hold 0"]}


async def test_the_ledger_must_match_and_be_caught_up(client: Any, store: Store) -> None:
    shop = await trade(client, store)
    await client.hincrby(keys.stock(keys.partition_of("C")), "C:wh2:committed", 2)  # no move
    await shop.engine.receive("B", "wh2", 4)  # in the outbox, not written yet
    report = await audit(shop.engine, store, wait_s=0.3)
    assert report.check("ledger_caught_up").violations[0].startswith("ledger behind by 1 entries")
    assert report.check("ledger_matches").violations == [
        "B@wh2: on_hand 4 in Redis, 0 in the ledger",
        "C@wh2: committed 2 in Redis, 0 in the ledger",
    ]
    # With a writer running, the audit waits for it: only the planted drift stays.
    stop = asyncio.Event()
    running = asyncio.create_task(Writer(client, store, consumer="late").run(stop, idle_ms=20))
    try:
        report = await audit(shop.engine, store, wait_s=10)
    finally:
        stop.set()
        await running
    assert failed(report) == {"ledger_matches": ["C@wh2: committed 2 in Redis, 0 in the ledger"]}


async def test_a_dead_lettered_channel_delivery_is_reported(client: Any, store: Store) -> None:
    shop = await trade(client, store)
    await client.xadd(inbound.DEAD, {"channel": "web", "delivery": "{}", "error": "unreadable"})
    report = await audit(shop.engine, store, wait_s=5)
    assert failed(report) == {
        "deliveries_applied": [
            "1 channel deliveries dead-lettered, not applied to stock: "
            "XRANGE sg:{inbox}:dead - + shows each with its error"
        ]
    }


async def test_a_customer_past_the_sale_limit_is_caught(client: Any, ledger: Store) -> None:
    shop = await trade(client, ledger)
    stock, field = keys.stock(keys.partition_of("A")), f"A:flash:limit.{ALICE}"
    assert await client.hget(stock, field) == "2"  # alice holds 2: at the limit
    await client.hincrby(stock, field, 1)
    report = await audit(shop.engine, ledger, wait_s=0)
    assert failed(report) == {
        "sale_limits": [
            f"A in sale flash, customer {ALICE}: 3 units > limit 2",
            f"A in sale flash, customer {ALICE}: counter 3, but held and confirmed holds have 2",
        ]
    }
    await drain(shop.writer)  # the first audit's sweep wrote expired events to the outbox
    await client.hincrby(stock, field, -2)  # under the limit, but not what the holds say
    report = await audit(shop.engine, ledger, wait_s=0)
    assert failed(report) == {
        "sale_limits": [
            f"A in sale flash, customer {ALICE}: counter 1, but held and confirmed holds have 2"
        ]
    }


async def test_expiry_entries_must_match_held_records(client: Any, ledger: Store) -> None:
    shop = await trade(client, ledger)
    home = keys.partition_of(shop.live)
    expiry = keys.partition_keys(home)[4]
    exp = int(await client.zscore(expiry, shop.live))
    other_p = 1 if home != 1 else 3
    other = keys.partition_keys(other_p)[4]
    # Each part's script reads its own clock: the other part may expire a ms apart.
    other_exp = int(await client.zscore(other, shop.live))
    await client.zadd(other, {shop.live: other_exp + 5})  # its entry is off by 5 ms
    await client.zrem(expiry, shop.live)
    await client.zadd(expiry, {"ghost": exp})
    report = await audit(shop.engine, ledger, wait_s=0)
    assert failed(report) == {
        "holds_settled": [
            f"hold {shop.live} (partition {other_p}): expires at {other_exp}, but its expiry "
            f"entry says {other_exp + 5}",
            f"hold {shop.live} (partition {home}): held, but no expiry entry",
            f"hold ghost (partition {home}): expiry entry, but there is no record",
        ]
    }


async def set_state(client: Any, hold_id: str, partition: int, state: str) -> None:
    raw = await client.hget(keys.holds(partition), hold_id)
    record = msgspec.json.decode(raw)
    await client.hset(keys.holds(partition), hold_id, msgspec.json.encode({**record, "st": state}))


async def test_parts_of_a_hold_must_share_one_fate(client: Any, ledger: Store) -> None:
    shop = await trade(client, ledger)
    parts = sorted(keys.partition_of(sku) for sku in ("A", "B"))
    await set_state(client, shop.live, keys.partition_of("B"), "confirmed")
    soon = await shop.engine.hold("web", {"A": 1, "B": 1}, ttl_ms=10_000)
    await set_state(client, soon.id, keys.partition_of("B"), "released")  # within the grace
    report = await audit(shop.engine, ledger, wait_s=0)
    states = {keys.partition_of("A"): "held", keys.partition_of("B"): "confirmed"}
    detail = ", ".join(f"partition {p} {states[p]}" for p in parts)
    violations = report.check("holds_settled").violations
    assert [v for v in violations if "parts disagree" in v] == [
        f"hold {shop.live}: parts disagree: {detail}"
    ]
    await client.hdel(keys.holds(keys.partition_of("B")), shop.live)
    report = await audit(shop.engine, ledger, wait_s=0)
    states[keys.partition_of("B")] = "missing"
    detail = ", ".join(f"partition {p} {states[p]}" for p in parts)
    violations = report.check("holds_settled").violations
    assert [v for v in violations if "parts disagree" in v] == [
        f"hold {shop.live}: parts disagree: {detail}"
    ]


async def test_no_held_record_is_left_past_its_expiry(client: Any, ledger: Store) -> None:
    shop = await trade(client, ledger)
    p = keys.partition_of("C")
    seconds, _ = await client.time()
    stale = {
        "id": "stale",
        "ch": "pos",
        "st": "held",
        "exp": seconds * 1000 - 5000,
        "parts": str(p),
        "lines": {},
    }
    await client.hset(keys.holds(p), "stale", msgspec.json.encode(stale))  # no expiry entry
    report = await audit(shop.engine, ledger, wait_s=0)
    violations = report.check("holds_settled").violations
    assert violations[0] == f"hold stale (partition {p}): held, but no expiry entry"
    assert violations[1].startswith(f"hold stale (partition {p}): held ")
    assert violations[1].endswith(" ms past its expiry after the sweep")
    assert len(violations) == 2 and failed(report).keys() == {"holds_settled"}
    text = format_text(report)
    assert "FAIL (2)" in text and text.endswith("audit: 2 violation(s) in 1 check(s)")


async def test_an_orphan_expiry_entry_is_reported_and_the_sweep_drops_it(
    client: Any, ledger: Store
) -> None:
    shop = await trade(client, ledger)
    await client.zadd(keys.partition_keys(0)[4], {"orphan": 1})  # due, and no record
    report = await audit(shop.engine, ledger, wait_s=0, sweep=False)
    violations = report.check("holds_settled").violations
    assert "hold orphan (partition 0): expiry entry, but there is no record" in violations
    # The scripts drop such an entry instead of failing: the partition keeps working.
    report = await audit(shop.engine, ledger, wait_s=0)
    assert "holds_settled" not in failed(report)
    assert await client.zscore(keys.partition_keys(0)[4], "orphan") is None
