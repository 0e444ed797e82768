"""Oversell rehearsal: buyers on four platform storefronts race the sync for one SKU.

    python loadtest/channel_oversell.py [--units 200] [--buyers 10] [--pause-ms 2000]
        [--seed 1] [--limits] [--redis-url URL]

Everything runs in this process, over real HTTP on loopback: the simulators of shopify,
amazon, ebay and etsy (the generic web channel is left out), the API that takes their
webhooks, and the channel worker that records their orders (inbox -> record_order) and
pushes each channel's ATS back to them. Each scenario starts on an empty keyspace, with a
new SQLite ledger and --units of one SKU at one location:

1. pool, no buffer: every channel is offered all the units;
2. pool with a buffer of BUFFER_PER_CHANNEL units on each channel;
3. ring-fenced: each channel gets units / 4 (Policy(FENCE, n)) that only it may sell.

Once every storefront shows its channel's ATS, --buyers buyers per storefront each order
1-3 units (never more than the storefront shows), waiting 0 to --pause-ms between two
orders, against the quantity the storefront was last pushed; a buyer stops once its
storefront reads 0. The scenario ends when every storefront reads 0, every order taken
is recorded (or dead-lettered), the inbox is drained, nothing is left to push and the
engine's ATS is 0 for every channel.

An order line beyond its channel's ATS is a channel oversell: the outbox's 'oversell'
events give the lines, the units short of the ATS (shortfall) and the units not even the
free stock could fill (unfilled). The platforms' documented rate limits are lifted unless
--limits: with them, the one inbox waits on Amazon's getOrder and getOrderItems (0.5/s
after a burst of 30), a scenario takes 40-90 s, and the lag makes more oversells.

The last line is `channel oversells: pool X buffered Y fenced Z`; the exit status is 1 if
Z != 0, committed + held > on_hand, committed != units sold - unfilled, or a scenario
timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from api.app import create_app
from engine import Engine, Policy, PolicyKind, connect, keys
from engine.channels import inbound
from engine.channels.sim.base import Simulator, free_port, serving
from engine.channels.simulate import plan, running
from engine.channels.worker import ChannelWorker, connectors
from engine.config import Settings
from engine.connect import is_empty
from engine.embedded import EmbeddedValkey

SKU, LOCATION = "OVERSELL-1", "wh1"
PLATFORMS = ("shopify", "amazon", "ebay", "etsy")
BUFFER_PER_CHANNEL = 10  # 5% of 200 units: a usual safety stock per marketplace listing
CONVERGE_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 120.0
MARKER = "stockguard:channel-oversell-owned"  # a database this script may flush


@dataclass(frozen=True)
class Scenario:
    name: str  # pool, buffered or fenced
    label: str
    policy: Policy


def scenarios(units: int) -> list[Scenario]:
    fence = units // len(PLATFORMS)
    buffered = Policy(PolicyKind.POOL, 0, BUFFER_PER_CHANNEL)
    return [
        Scenario("pool", "pool, no buffer", Policy()),
        Scenario("buffered", f"pool, buffer {BUFFER_PER_CHANNEL}/ch", buffered),
        Scenario("fenced", f"ring-fenced {fence}/ch", Policy(PolicyKind.FENCE, fence)),
    ]


@dataclass(frozen=True)
class Load:
    buyers: int = 10  # per storefront
    pause_ms: tuple[float, float] = (0.0, 2000.0)  # between two orders of one buyer
    seed: int = 1
    limits: bool = False  # the platforms' documented rate limits


@dataclass
class Result:
    scenario: Scenario
    orders: int = 0  # taken by the storefronts
    units_sold: int = 0
    oversell_lines: int = 0  # 'oversell' events in the outbox
    oversold_units: int = 0  # their shortfall: units beyond the channel's ATS
    unfilled: int = 0  # units beyond even the free stock: never committed
    committed: int = 0
    worker_oversells: int = 0  # the lines the channel worker counted
    sold: Counter[str] = field(default_factory=Counter)  # units by channel
    oversold: Counter[str] = field(default_factory=Counter)  # oversold units by channel
    dead: Counter[str] = field(default_factory=Counter)  # dead-lettered deliveries by reason
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # broken invariants, timeouts


@dataclass
class Stack:
    worker: ChannelWorker
    simulators: dict[str, Simulator]

    def quantities(self) -> list[int]:
        return [sim.quantities.get(SKU, 0) for sim in self.simulators.values()]

    def orders(self) -> int:
        return sum(len(sim.orders) for sim in self.simulators.values())


# -- the channels, their storefronts and the worker ------------------------------------------


async def define(engine: Engine, scenario: Scenario, units: int) -> None:
    await engine.define_location(LOCATION)
    for name in PLATFORMS:
        await engine.define_channel(name, [LOCATION])
    await engine.define_sku(SKU)
    for name in PLATFORMS:
        await engine.set_policy(SKU, name, scenario.policy)
    await engine.receive(SKU, LOCATION, units)


@contextlib.asynccontextmanager
async def storefronts(
    engine: Engine, redis_url: str, ledger_url: str, limits: bool
) -> AsyncIterator[Stack]:
    """The simulators, the API taking their webhooks and the channel worker, on loopback."""
    port = free_port()
    planned = plan([SKU], f"http://127.0.0.1:{port}", limits=limits, channels=PLATFORMS)
    settings = Settings(redis_url=redis_url, database_url=ledger_url)
    async with running(planned) as sims:
        configs = [c.config for c in sims]
        app = create_app(settings, access_log=False, channels=configs)
        async with serving(app, port), connectors(configs) as connected:
            worker = ChannelWorker(engine, connected, resync_interval_s=3600)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                yield Stack(worker, {c.name: c.simulator for c in sims})
            finally:
                stop.set()
                # A fetch may be waiting for its rate limit: it is cancelled after 10 s.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task, 10)


async def converge(engine: Engine, stack: Stack) -> None:
    """Waits until every storefront shows its channel's ATS."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        ats = (await engine.stock(SKU, list(stack.simulators))).ats
        shown = {name: sim.quantities.get(SKU) for name, sim in stack.simulators.items()}
        if shown == ats and all(ats.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"storefronts show {shown}, the engine's ATS is {ats}")
        await asyncio.sleep(0.02)


# -- the buyers and the end of a scenario -----------------------------------------------------


async def buyer(sim: Simulator, rng: random.Random, pause_ms: tuple[float, float]) -> None:
    """Orders 1-3 units, never more than the storefront shows, until it reads 0."""
    while (left := sim.quantities.get(SKU, 0)) > 0:
        sim.take_order(SKU, min(rng.randint(1, 3), left))
        await asyncio.sleep(rng.uniform(*pause_ms) / 1000)


async def settled(engine: Engine, stack: Stack) -> bool:
    """Every storefront reads 0 and was last pushed 0, every order taken is recorded or
    dead-lettered, the inbox is drained and the engine's ATS is 0 for every channel."""
    taken = stack.orders()
    if any(stack.quantities()):
        return False
    dead = Counter(fields["channel"] for fields in await dead_letters(engine.client))
    for name, sim in stack.simulators.items():
        recorded = await engine.client.hlen(inbound.orders_key(name))
        if recorded + dead[name] < len(sim.orders):
            return False
    if (await inbound.lag(engine.client))[0]:
        return False
    syncs = stack.worker.sync.channels.values()
    if any(c.pending or c.in_flight or c.last.get(SKU) != 0 for c in syncs):
        return False
    ats = (await engine.stock(SKU, list(stack.simulators))).ats
    return not any(ats.values()) and not any(stack.quantities()) and stack.orders() == taken


async def sell_out(engine: Engine, stack: Stack, load: Load) -> bool:
    """Lets the buyers loose; False if the scenario did not settle in time."""
    rng = random.Random(load.seed)
    tasks = [
        asyncio.create_task(buyer(sim, random.Random(rng.random()), load.pause_ms))
        for sim in stack.simulators.values()
        for _ in range(load.buyers)
    ]
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    try:
        while not await settled(engine, stack):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- what happened ---------------------------------------------------------------------------


async def oversell_events(client: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for p in range(keys.PARTITIONS):
        for _, fields in await client.xrange(keys.outbox(p)):
            decoded = msgspec.json.decode(fields["events"])
            events += [e for e in decoded if e.get("type") == "oversell"]
    return events


async def dead_letters(client: Any) -> list[dict[str, str]]:
    """The inbox deliveries the worker could never apply, with the reason."""
    return [fields for _, fields in await client.xrange(inbound.DEAD)]


async def tally(engine: Engine, stack: Stack, result: Result) -> None:
    for name, sim in stack.simulators.items():
        result.orders += len(sim.orders)
        result.sold[name] = sum(order.qty for order in sim.orders)
    result.units_sold = sum(result.sold.values())
    for event in await oversell_events(engine.client):
        result.oversell_lines += 1
        result.oversold_units += event["shortfall"]
        result.unfilled += event["unfilled"]
        result.oversold[event["channel"]] += event["shortfall"]
    for fields in await dead_letters(engine.client):
        result.dead[fields["error"]] += 1
    result.worker_oversells = stack.worker.processor.stats["oversells"]
    for row in (await engine.stock(SKU, [])).locations:
        result.committed += row.committed
        if row.committed + row.held > row.on_hand:
            result.problems.append(f"{row.location}: committed {row.committed} + held "
                                   f"{row.held} > on_hand {row.on_hand}")  # fmt: skip
    if result.committed != result.units_sold - result.unfilled:
        result.problems.append(f"committed {result.committed} != units sold "
                               f"{result.units_sold} - unfilled {result.unfilled}")  # fmt: skip


async def run_scenario(
    engine: Engine,
    redis_url: str,
    ledger_url: str,
    scenario: Scenario,
    units: int = 200,
    load: Load = Load(),
) -> Result:
    """One scenario on an empty keyspace (the caller's); the engine must use redis_url."""
    result = Result(scenario)
    await define(engine, scenario, units)
    started = time.perf_counter()
    async with storefronts(engine, redis_url, ledger_url, load.limits) as stack:
        await converge(engine, stack)
        if not await sell_out(engine, stack, load):
            result.problems.append(f"not settled within {SETTLE_TIMEOUT_S:g} s")
        await tally(engine, stack, result)
    result.seconds = time.perf_counter() - started
    return result


# -- the script ------------------------------------------------------------------------------


def report(results: list[Result]) -> list[str]:
    lines = [
        f"{'scenario':<20}{'orders':>7}{'units sold':>11}{'oversell lines':>15}"
        f"{'oversold units':>15}{'unfilled':>9}{'seconds':>8}"
    ]
    for r in results:
        lines.append(
            f"{r.scenario.label:<20}{r.orders:>7}{r.units_sold:>11}{r.oversell_lines:>15}"
            f"{r.oversold_units:>15}{r.unfilled:>9}{r.seconds:>8.1f}"
        )
    for r in results:
        name = r.scenario.name
        per = ", ".join(f"{n} {r.sold[n]} ({r.oversold[n]} oversold)" for n in PLATFORMS)
        lines.append(f"{name}: units sold by channel: {per}; committed {r.committed}")
        if r.worker_oversells != r.oversell_lines:
            lines.append(f"{name}: the worker counted {r.worker_oversells} oversell lines")
        lines += [f"{name}: {n} deliveries dead-lettered: {error}" for error, n in r.dead.items()]
        lines += [f"{name}: INVARIANT BROKEN: {problem}" for problem in r.problems]
    by_name = {r.scenario.name: r.oversell_lines for r in results}
    lines.append(
        f"channel oversells: pool {by_name['pool']} buffered {by_name['buffered']} "
        f"fenced {by_name['fenced']}"
    )
    return lines


async def claim(client: Any) -> None:
    """Flushes the database, unless it holds data this script did not put there."""
    if not await client.exists(MARKER) and not await is_empty(client):
        raise SystemExit("channel-oversell: the database is not empty; give an empty one")
    await client.flushdb()
    await client.set(MARKER, "1")


async def rehearse(redis_url: str, units: int, load: Load, data: Path) -> list[Result]:
    client = await connect(redis_url)
    results = []
    try:
        for n, scenario in enumerate(scenarios(units)):
            await claim(client)
            ledger_url = f"sqlite:///{data}/ledger-{n}.db"
            engine = Engine(client)
            results.append(await run_scenario(engine, redis_url, ledger_url, scenario, units, load))
    finally:
        await client.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--buyers", type=int, default=Load.buyers, help="per storefront")
    parser.add_argument("--pause-ms", type=float, default=Load.pause_ms[1],
                        help="most a buyer waits between two orders")  # fmt: skip
    parser.add_argument("--seed", type=int, default=Load.seed)
    parser.add_argument("--limits", action="store_true", help="the documented rate limits")
    parser.add_argument("--redis-url", help="an empty database (default: an embedded Valkey)")
    args = parser.parse_args(argv)
    load = Load(args.buyers, (0.0, args.pause_ms), args.seed, args.limits)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("stockguard.inbound").setLevel(logging.CRITICAL)  # a line per oversell
    rate = 2000 * load.buyers / args.pause_ms if args.pause_ms else float("inf")
    limits = "on, as documented" if load.limits else "lifted (--limits: on, as documented)"
    print(f"channel-oversell: {args.units} x {SKU} at {LOCATION} on {', '.join(PLATFORMS)} "
          "(no web channel)")  # fmt: skip
    print(f"{load.buyers} buyers per storefront, an order of 1-3 units every 0-{args.pause_ms:g} "
          f"ms each (about {rate:.0f} orders/s per storefront), seed {load.seed}; "
          f"buffer {BUFFER_PER_CHANNEL}/ch; rate limits {limits}")  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stockguard-oversell-") as tmp:
        if args.redis_url:
            results = asyncio.run(rehearse(args.redis_url, args.units, load, Path(tmp)))
        else:
            with EmbeddedValkey(Path(tmp) / "valkey") as server:
                results = asyncio.run(rehearse(server.url, args.units, load, Path(tmp)))
    lines = report(results)
    print("\n".join([*lines[:-1], f"total {time.perf_counter() - started:.1f} s", lines[-1]]))
    fenced = next(r for r in results if r.scenario.name == "fenced")
    return 1 if fenced.oversell_lines or any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
