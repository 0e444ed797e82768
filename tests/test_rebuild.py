"""Rebuild: Redis loses everything, and the SQL ledger brings it back as it was."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import msgspec
import pytest
from helpers import claim_database, setup_shop

from engine import BufferOverride, Engine, Hold, HoldState, Policy, PolicyKind, StockLevel, keys
from engine.errors import (
    HoldNotFoundError,
    IdempotencyConflictError,
    LimitExceededError,
    StockguardError,
)
from engine.models import Catalog
from engine.rebuild import KeyspaceNotEmptyError, rebuild
from engine.reconcile import Drift, reconcile
from engine.store import Store
from engine.writer import Writer

SKUS = ("A", "B", "C", "D", "E", "F")  # partitions 3, 1, 0, 2, 3, 1
LOCATIONS = ("wh1", "wh2", "store")
CHANNELS = ("web", "amazon", "pos")
LONG_MS, SHORT_MS = 600_000, 20
KINDS = (
    "receive " * 4 + "hold " * 5 + "confirm release extend ship cancel transfer adjust count "
    "return settings sleep"
).split()

Payload = tuple[str, dict[str, int], int, str | None]


async def drain(writer: Writer) -> None:
    while await writer.step():
        pass


async def shop(engine: Engine) -> None:
    """web and amazon sell from wh1 then wh2 (amazon has 4 units fenced), pos from store."""
    for location in LOCATIONS:
        await engine.define_location(location)
    await engine.define_channel("web", ["wh1", "wh2"])
    await engine.define_channel("amazon", ["wh1", "wh2"], Policy(PolicyKind.FENCE, qty=4))
    await engine.define_channel("pos", ["store"], Policy(PolicyKind.POOL, buffer=1))
    for sku in SKUS:
        await engine.define_sku(sku, buffer=1)


async def started(client: Any, store: Store) -> tuple[Engine, Writer]:
    """An Engine on the shop above, and a Writer into the store."""
    engine, writer = Engine(client), Writer(client, store)
    await writer.setup()
    await shop(engine)
    return engine, writer


async def settings(engine: Engine, rng: random.Random, sku: str) -> None:
    choice = rng.randrange(3)
    if choice == 0:
        await engine.define_sku(sku, buffer=rng.randint(0, 2))
    elif choice == 1:
        await engine.set_policy(sku, "web", Policy(PolicyKind.CAP, qty=rng.randint(2, 20)))
    else:
        await engine.set_buffer_override(sku, BufferOverride(0, 10**13, rng.randint(0, 3)))


async def hold_step(
    engine: Engine, rng: random.Random, kind: str, n: int, placed: dict[str, Payload]
) -> None:
    hold_id = rng.choice(sorted(placed)) if placed else "none"
    if kind == "hold":
        channel = rng.choice(CHANNELS)
        lines = {s: rng.randint(1, 3) for s in rng.sample(SKUS, rng.randint(1, 3))}
        ttl_ms, customer = rng.choice((LONG_MS, SHORT_MS)), rng.choice((None, "c-1"))
        hold = await engine.hold(channel, lines, ttl_ms=ttl_ms, customer=customer, hold_id=f"h{n}")
        placed[hold.id] = (channel, lines, ttl_ms, customer)
    elif kind == "confirm":
        await engine.confirm(hold_id, reference=f"order-{n}")
    elif kind == "release":
        await engine.release(hold_id)
    else:
        await engine.extend(hold_id, rng.choice((LONG_MS, SHORT_MS)))


async def move_step(engine: Engine, rng: random.Random, kind: str, n: int) -> None:
    sku, location, qty = rng.choice(SKUS), rng.choice(LOCATIONS), rng.randint(1, 4)
    if kind == "receive":
        await engine.receive(sku, location, rng.randint(1, 20))
    elif kind in ("ship", "cancel"):
        await getattr(engine, kind)(sku, location, qty, reference=f"order-{n}")
    elif kind == "transfer":
        await engine.transfer(sku, location, rng.choice(LOCATIONS[:2]), qty)
    elif kind == "adjust":
        await engine.adjust(sku, location, rng.choice((-qty, qty)), reason="damage")
    elif kind == "count":
        await engine.count(sku, location, rng.randint(0, 25))
    else:
        await engine.return_units(sku, location, qty, damaged=rng.random() < 0.3, reason="rma")


async def step(engine: Engine, rng: random.Random, n: int, placed: dict[str, Payload]) -> None:
    """One random operation; a refusal is a normal outcome."""
    kind = rng.choice(KINDS)
    with contextlib.suppress(StockguardError):
        if kind in ("hold", "confirm", "release", "extend"):
            await hold_step(engine, rng, kind, n, placed)
        elif kind == "settings":
            await settings(engine, rng, rng.choice(SKUS))
        elif kind == "sleep":
            await asyncio.sleep(SHORT_MS / 1000)  # lets short holds expire
        else:
            await move_step(engine, rng, kind, n)


async def history(engine: Engine, seed: int, steps: int = 250) -> dict[str, Payload]:
    """A seeded random run of every verb; returns the payload of each hold placed."""
    rng, placed = random.Random(seed), dict[str, Payload]()
    for sku in SKUS:
        for location in LOCATIONS:
            await engine.receive(sku, location, 10)
    for n in range(steps):
        await step(engine, rng, n, placed)
    await asyncio.sleep(2 * SHORT_MS / 1000)  # every short hold is past its expiry
    await engine.sweep()
    return placed


class Snapshot(msgspec.Struct):
    catalog: Catalog
    stock: dict[str, StockLevel]
    holds: dict[str, Hold | None]  # None: not found
    replays: dict[str, Hold | str]  # each placed hold replayed: the Hold, or the error's name


def _by_line(hold: Hold) -> Hold:
    # A replay lists a multi-part hold's lines in placement order, get_hold in partition order.
    lines = tuple(sorted(hold.lines, key=lambda line: (line.sku, line.location)))
    return msgspec.structs.replace(hold, lines=lines)


async def snapshot(engine: Engine, placed: dict[str, Payload]) -> Snapshot:
    holds: dict[str, Hold | None] = {}
    replays: dict[str, Hold | str] = {}
    for hold_id, (channel, lines, ttl_ms, customer) in placed.items():
        try:
            holds[hold_id] = await engine.get_hold(hold_id)
        except HoldNotFoundError:
            holds[hold_id] = None
        try:
            replay = await engine.hold(
                channel, lines, ttl_ms=ttl_ms, customer=customer, hold_id=hold_id
            )
            replays[hold_id] = _by_line(replay)
        except StockguardError as error:
            replays[hold_id] = type(error).__name__
    stock = {sku: await engine.stock(sku) for sku in SKUS}
    return Snapshot(await engine.catalog(), stock, holds, replays)


@pytest.mark.parametrize("seed", [7, 2024])
async def test_rebuild_after_redis_loss_restores_stock_ats_and_holds(
    client: Any, redis_url: str, store: Store, seed: int
) -> None:
    engine, writer = await started(client, store)
    placed = await history(engine, seed)
    before = await snapshot(engine, placed)
    await drain(writer)
    states = {hold.state for hold in before.holds.values() if hold is not None}
    assert states == set(HoldState), "the history should leave holds in every state"
    assert any(len({keys.partition_of(s) for s in lines}) > 1 for _, lines, _, _ in placed.values())

    await claim_database(client, redis_url)  # FLUSHDB: Redis lost its data
    with pytest.raises(HoldNotFoundError):
        await engine.get_hold(next(iter(placed)))
    report = await rebuild(client, store)

    assert report.catalog_version == before.catalog.version
    assert report.skus == len(SKUS)
    assert report.held_parts > 0 and report.finished_parts > 0
    after = await snapshot(Engine(client), placed)
    assert after.catalog == before.catalog
    assert after.stock == before.stock
    assert after.holds == before.holds
    assert after.replays == before.replays
    for hold_id, (channel, lines, ttl_ms, customer) in placed.items():
        with pytest.raises(IdempotencyConflictError):  # another payload: still a conflict
            await engine.hold(channel, lines, ttl_ms=ttl_ms + 1, customer=customer, hold_id=hold_id)
    assert await reconcile(client, store) == []


async def test_a_ledger_written_under_8_partitions_rebuilds_into_this_layout(
    client: Any, redis_url: str, store: Store
) -> None:
    # Before sg:layout, stockguard used 8 partitions, and its hold events name parts that
    # no longer hold their lines. Here the ledger's part numbers move to 4-7 (as parts of
    # that layout would be); rebuild puts each line in its SKU's partition now.
    engine, writer = await started(client, store)
    placed = await history(engine, 7)
    before = await snapshot(engine, placed)
    await drain(writer)
    shifted = await store._execute(
        "UPDATE hold_events SET part = part + 4, parts = "
        "REPLACE(REPLACE(REPLACE(REPLACE(parts, '3', '7'), '2', '6'), '1', '5'), '0', '4')"
    )
    assert shifted > 0

    await claim_database(client, redis_url)
    report = await rebuild(client, store)

    assert report.held_parts > 0
    after = await snapshot(Engine(client), placed)
    assert after.stock == before.stock
    for name in ("holds", "replays"):
        now, then = getattr(after, name), getattr(before, name)
        assert _without_expiry(now) == _without_expiry(then)
        assert _expiry_gaps(now, then) <= 2  # ms: see _without_expiry
    assert await reconcile(client, store) == []


def _without_expiry(holds: dict[str, Any]) -> dict[str, Any]:
    # A multi-part hold's parts each took the clock of their own script call, a millisecond
    # apart at most, and a hold reports its home part's expiry.
    return {
        hold_id: msgspec.structs.replace(hold, expires_at_ms=0) if isinstance(hold, Hold) else hold
        for hold_id, hold in holds.items()
    }


def _expiry_gaps(now: dict[str, Any], then: dict[str, Any]) -> int:
    return max(
        abs(hold.expires_at_ms - then[hold_id].expires_at_ms)
        for hold_id, hold in now.items()
        if isinstance(hold, Hold)
    )


async def test_a_hold_that_expired_while_redis_was_down_is_settled_and_recorded(
    client: Any, redis_url: str, store: Store
) -> None:
    engine, writer = await started(client, store)
    await engine.receive("A", "wh1", 10)
    hold = await engine.hold("web", {"A": 3}, ttl_ms=50)
    await drain(writer)
    await claim_database(client, redis_url)  # FLUSHDB: Redis lost its data
    await asyncio.sleep(0.1)
    report = await rebuild(client, store)
    assert report.held_parts == 1, "restored as held, for the scripts to settle"
    assert (await engine.get_hold(hold.id)).state is HoldState.EXPIRED
    stock = await engine.stock("A")  # its script settles the hold first
    assert [(s.location, s.held, s.available) for s in stock.locations][1] == ("wh1", 0, 10)
    assert stock.ats["web"] == 10 - 4 - 1, "amazon's fence of 4 and the buffer of 1 kept back"
    await writer.setup()  # the flush took the consumer groups with it
    await drain(writer)
    latest = await store.latest_hold_events()
    assert [(e.hold_id, e.event, e.state) for e in latest] == [(hold.id, "expired", "expired")]


async def test_with_a_retention_holds_finished_long_ago_are_left_out(
    client: Any, redis_url: str, store: Store
) -> None:
    engine, writer = await started(client, store)
    await engine.receive("A", "wh1", 10)
    live = await engine.hold("web", {"A": 1}, ttl_ms=LONG_MS)
    old = await engine.release((await engine.hold("web", {"A": 1}, ttl_ms=LONG_MS)).id)
    await asyncio.sleep(0.3)
    recent = await engine.release((await engine.hold("web", {"A": 1}, ttl_ms=LONG_MS)).id)
    await drain(writer)
    old_ms = max(e.at_ms for e in await store.latest_hold_events() if e.hold_id == old.id)
    await claim_database(client, redis_url)  # FLUSHDB: Redis lost its data
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    report = await rebuild(client, store, retention_ms=now_ms - old_ms - 1)
    assert (report.held_parts, report.finished_parts) == (1, 1)
    with pytest.raises(HoldNotFoundError):
        await engine.get_hold(old.id)
    assert (await engine.get_hold(recent.id)).state is HoldState.RELEASED
    assert await engine.hold("web", {"A": 1}, ttl_ms=LONG_MS, hold_id=live.id) == live


async def test_rebuild_refuses_a_keyspace_with_state_unless_forced(
    client: Any, store: Store
) -> None:
    engine, writer = await started(client, store)
    await engine.receive("A", "wh1", 5)
    await drain(writer)
    with pytest.raises(KeyspaceNotEmptyError) as refused:
        await rebuild(client, store)
    assert keys.partition_keys(0)[0] in refused.value.found  # the catalog copy
    stray = keys.partition_of("A")
    await client.hset(keys.stock(stray), mapping={"A:wh1:on_hand": 99, "Z:wh1:on_hand": 1})
    await client.hset(keys.holds(stray), "ghost", "{}")
    report = await rebuild(client, store, force=True)
    assert report.stock_fields == 2
    assert await client.hgetall(keys.stock(stray)) == {"A:wh1:on_hand": "5", "A:wh1:committed": "0"}
    assert await client.hexists(keys.holds(stray), "ghost") == 0
    assert await client.xlen(keys.outbox(stray)) > 0, "the outbox is kept"
    assert (await engine.stock("A")).locations[1].on_hand == 5


async def test_repairing_one_sku_fixes_its_fields_and_leaves_the_rest(
    client: Any, store: Store
) -> None:
    engine, writer = await started(client, store)
    for sku in ("A", "D"):
        await engine.receive(sku, "wh1", 20)
        await engine.receive(sku, "store", 2)
    sold = await engine.hold("web", {"A": 3}, ttl_ms=LONG_MS)
    await engine.confirm(sold.id)
    held = await engine.hold("web", {"A": 2, "D": 1}, ttl_ms=LONG_MS)
    await drain(writer)
    a, d = keys.stock(keys.partition_of("A")), keys.stock(keys.partition_of("D"))
    await client.hset(a, mapping={"A:wh1:on_hand": 50, "A:wh1:committed": 0, "A:wh2:on_hand": 7})
    await client.hset(d, "D:store:on_hand", 40)
    assert len(await reconcile(client, store)) == 4

    report = await rebuild(client, store, sku="A")

    assert report.stock_fields == 2 * len(LOCATIONS)
    a_wh1 = (await engine.stock("A")).locations
    assert [(s.location, s.on_hand, s.committed, s.held) for s in a_wh1] == [
        ("store", 2, 0, 0),
        ("wh1", 20, 3, 2),
        ("wh2", 0, 0, 0),
    ]
    assert await reconcile(client, store) == [Drift("D", "store", "on_hand", 40, 2)]
    assert _by_line(await engine.get_hold(held.id)) == _by_line(held)


@pytest.mark.cluster
async def test_rebuild_runs_unchanged_on_a_cluster(fresh_cluster_client: Any, store: Store) -> None:
    client = fresh_cluster_client
    engine, writer = await started(client, store)
    placed = await history(engine, seed=11, steps=80)
    before = await snapshot(engine, placed)
    await drain(writer)
    with pytest.raises(KeyspaceNotEmptyError):
        await rebuild(client, store)
    await client.flushall()
    await rebuild(client, store)
    after = await snapshot(Engine(client), placed)
    assert (after.stock, after.holds, after.replays) == (before.stock, before.holds, before.replays)
    assert await reconcile(client, store) == []


async def test_an_operation_retried_after_a_rebuild_is_refused_not_applied_twice(
    client: Any, redis_url: str, store: Store
) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 5, op_id="asn-9")
    writer = Writer(client, store)
    await writer.setup()
    while await writer.step():
        pass
    await claim_database(client, redis_url)  # FLUSHDB: Redis lost its data
    await rebuild(client, store)
    with pytest.raises(IdempotencyConflictError):
        await engine.receive("A", "wh1", 5, op_id="asn-9")
    assert (await engine.stock("A")).locations[1].on_hand == 5


async def test_flash_sale_limits_come_back_with_the_holds(
    client: Any, redis_url: str, store: Store
) -> None:
    engine, writer = await started(client, store)
    for sku in SKUS:
        await engine.receive(sku, "wh1", 20)
    limit = ("drop", 3)
    kept = await engine.hold("web", {SKUS[0]: 1}, ttl_ms=600_000, customer="a", sale=limit)
    bought = await engine.hold(
        "web", {SKUS[0]: 1, SKUS[1]: 2}, ttl_ms=600_000, customer="a", sale=limit
    )
    await engine.confirm(bought.id, reference="o-1")
    released = await engine.hold("web", {SKUS[0]: 1}, ttl_ms=600_000, customer="a", sale=limit)
    await engine.release(released.id)
    await engine.hold("web", {SKUS[0]: 3}, ttl_ms=600_000, customer="b", sale=limit)
    before = {p: await client.hgetall(keys.stock(p)) for p in range(keys.PARTITIONS)}
    await drain(writer)
    await claim_database(client, redis_url)  # FLUSHDB: Redis lost its data
    await rebuild(client, store)
    after = {p: await client.hgetall(keys.stock(p)) for p in range(keys.PARTITIONS)}
    limits = {
        p: {f: v for f, v in fields.items() if ":limit." in f and v != "0"}
        for p, fields in before.items()
    }
    assert limits == {p: {f: v for f, v in after[p].items() if ":limit." in f} for p in after}
    assert any(limits.values())
    # The limit still holds, and a sale hold replayed after the rebuild is no conflict.
    with pytest.raises(LimitExceededError):
        await engine.hold("web", {SKUS[0]: 2}, ttl_ms=600_000, customer="a", sale=limit)
    again = await engine.hold(
        "web", {SKUS[0]: 1}, ttl_ms=600_000, customer="a", sale=limit, hold_id=kept.id
    )
    assert again == kept
    await engine.release(kept.id)  # and releasing a restored sale hold gives its unit back
    await engine.hold("web", {SKUS[0]: 1}, ttl_ms=600_000, customer="a", sale=limit)
