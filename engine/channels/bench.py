"""`stockguard bench sync`: how fast an ATS change reaches every platform, and how much
the sync coalesces.

Three processes, as in production: the SyncWorker with the four platform connectors
(this one), their simulators on loopback (rate limits lifted unless asked), and the load
(checkout traffic) on an Engine of its own. The load is `rate` ATS changes
a second across `skus` SKUs: each change receives one unit of a random SKU, so its ATS
on every channel rises by one, and the value after the change identifies it. A change's
lag on a channel is from the moment the engine applied it to the moment the simulator
first held that value or a later one. Pushes are the values the simulators accepted;
changes count once per channel, so the coalescing ratio is pushes / (changes x channels).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from statistics import quantiles
from typing import Any

import httpx
import msgspec

from ..engine import Engine
from .base import ChannelConfig
from .sim.base import free_port
from .simulate import plan, serve_in_child
from .sync import SyncWorker
from .worker import connectors

PLATFORMS = ("shopify", "amazon", "ebay", "etsy")
LOCATION = "bench-wh"


@dataclass
class Change:
    sku: str
    value: int  # the SKU's ATS on every channel once this change applied
    at_ms: int


@dataclass
class Result:
    changes: list[Change]
    lags_ms: dict[str, list[int]] = field(default_factory=dict)  # channel -> a lag per change
    pushes: dict[str, int] = field(default_factory=dict)  # channel -> values accepted
    throttled: dict[str, int] = field(default_factory=dict)  # channel -> 429s answered
    final_ok: bool = False  # every simulator ended with exactly the engine's ATS

    @property
    def ratio(self) -> float:
        return sum(self.pushes.values()) / max(1, len(self.changes) * len(self.pushes))

    def all_lags(self) -> list[int]:
        return [lag for lags in self.lags_ms.values() for lag in lags]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def setup(engine: Engine, skus: list[str], channels: tuple[str, ...]) -> None:
    await engine.define_location(LOCATION)
    for name in channels:
        await engine.define_channel(name, [LOCATION])
    for sku in skus:
        await engine.define_sku(sku)


async def load(engine: Engine, skus: list[str], rate: int, seconds: float) -> list[Change]:
    """`rate` receives a second, each of one unit of a random SKU, issued every 10 ms for
    what the clock says is owed (a slow tick is made up by the next)."""
    rng = random.Random(7)
    changes: list[Change] = []
    start = time.monotonic()

    async def one(sku: str) -> None:
        level = await engine.receive(sku, LOCATION, 1, reason="bench")
        changes.append(Change(sku, level.on_hand, now_ms()))

    issued, running = 0, set()
    while (elapsed := time.monotonic() - start) < seconds:
        for _ in range(int(elapsed * rate) - issued):
            task = asyncio.create_task(one(rng.choice(skus)))
            running.add(task)
            task.add_done_callback(running.discard)
            issued += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*running)
    return changes


def _load_in_child(url: str, skus: list[str], rate: int, seconds: float, out: Any) -> None:
    """A process's main: the load, on an Engine of its own; sends back its changes."""
    from ..connect import connect

    async def main() -> list[Change]:
        client = await connect(url)
        try:
            return await load(Engine(client), skus, rate, seconds)
        finally:
            await client.aclose()

    out.send([(c.sku, c.value, c.at_ms) for c in asyncio.run(main())])


async def load_elsewhere(url: str, skus: list[str], rate: int, seconds: float) -> list[Change]:
    """The load from a process of its own, as checkout traffic comes from other processes
    than the sync worker's."""
    spawn = multiprocessing.get_context("spawn")
    receiving, sending = spawn.Pipe(duplex=False)
    process = spawn.Process(target=_load_in_child, args=(url, skus, rate, seconds, sending))
    process.start()
    rows = await asyncio.to_thread(receiving.recv)
    await asyncio.to_thread(process.join, 30)
    return [Change(*row) for row in rows]


def lags(changes: list[Change], history: dict[str, list[list[int]]]) -> list[int]:
    """Per change: ms until the simulator first held its value or a later one (-1: never)."""
    out = []
    for change in changes:
        seen = history.get(change.sku, [])
        when = next((at for at, qty in seen if qty >= change.value), None)
        out.append(-1 if when is None else max(0, when - change.at_ms))
    return out


class Platforms:
    """The simulators, served by a child process; read over their control routes."""

    def __init__(self, configs: list[ChannelConfig], limits: bool) -> None:
        self.ports = [free_port() for _ in configs]
        self.configs = [
            msgspec.structs.replace(c, base_url=f"http://127.0.0.1:{port}")
            for c, port in zip(configs, self.ports, strict=True)
        ]
        self.limits = limits
        self.http = httpx.AsyncClient(timeout=30.0)
        self.process: multiprocessing.process.BaseProcess | None = None

    async def __aenter__(self) -> Platforms:
        spawn = multiprocessing.get_context("spawn")
        self.process = spawn.Process(
            target=serve_in_child,
            args=(msgspec.json.encode(self.configs), self.ports, "http://127.0.0.1:9", self.limits),
            daemon=True,
        )
        self.process.start()
        for config in self.configs:
            await _until(lambda c=config: self._up(c), 30.0)  # type: ignore[misc]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        if self.process is not None:
            self.process.terminate()
            self.process.join(10)

    async def _up(self, config: ChannelConfig) -> bool:
        try:
            return (await self.http.get(config.base_url + "/_sim/state")).status_code == 200
        except httpx.HTTPError:
            return False

    async def get(self, config: ChannelConfig, what: str) -> dict[str, Any]:
        response = await self.http.get(f"{config.base_url}/_sim/{what}")
        return response.json()  # type: ignore[no-any-return]

    async def converged(self, engine: Engine, skus: list[str]) -> bool:
        for config in self.configs:
            ats = await engine.ats(config.channel, skus)
            held = (await self.get(config, "state"))["quantities"]
            if any(held.get(sku) != qty for sku, qty in ats.items()):
                return False
        return True


async def run(
    engine: Engine,
    *,
    url: str,  # the server's, for the load's process
    skus: int = 100,
    rate: int = 1000,
    seconds: float = 10.0,
    limits: bool = False,
    channels: tuple[str, ...] = PLATFORMS,
    settle_s: float = 60.0,
    **tuning: Any,  # SyncWorker's max_in_flight, linger_ms, gather_s
) -> Result:
    names = [f"BENCH-{n:03d}" for n in range(skus)]
    await setup(engine, names, channels)
    planned = plan(names, "http://127.0.0.1:9", limits=limits, channels=channels,
                   options={"poll_interval_s": 0})  # fmt: skip
    async with Platforms([p.config for p in planned], limits) as platforms:
        async with connectors(platforms.configs) as connected:
            sync = SyncWorker(engine, connected.values(), resync_interval_s=3600, **tuning)
            stop = asyncio.Event()
            task = asyncio.create_task(sync.run(stop))
            await _until(lambda: platforms.converged(engine, names), settle_s)
            before = {c.channel: (await platforms.get(c, "history"))["updates"]
                      for c in platforms.configs}  # fmt: skip
            changes = await load_elsewhere(url, names, rate, seconds)
            final_ok = await _until(lambda: platforms.converged(engine, names), settle_s)
            stop.set()
            await task
        result = Result(changes, final_ok=final_ok)
        for config in platforms.configs:
            seen = await platforms.get(config, "history")
            result.lags_ms[config.channel] = lags(changes, seen["history"])
            result.pushes[config.channel] = seen["updates"] - before[config.channel]
            result.throttled[config.channel] = seen["throttled"]
    return result


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


def percentile(values: list[int], q: int) -> float:
    if len(values) < 2:
        return float(values[0]) if values else 0.0
    return quantiles(values, n=100, method="inclusive")[q - 1]


def report(result: Result, rate: int, seconds: float) -> list[str]:
    lines = [
        f"load: {len(result.changes):,} ATS changes in {seconds:g} s ({rate:,}/s target) "
        f"across {len(set(c.sku for c in result.changes))} SKUs",
        f"{'channel':>10} {'pushes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'429s':>6}",
    ]
    for name, channel_lags in result.lags_ms.items():
        landed = [lag for lag in channel_lags if lag >= 0]
        lines.append(
            f"{name:>10} {result.pushes[name]:>8,} {percentile(landed, 50):>8.1f} "
            f"{percentile(landed, 99):>8.1f} {max(landed, default=0):>8} "
            f"{result.throttled[name]:>6}"
        )
    every = [lag for lag in result.all_lags() if lag >= 0]
    lost = sum(1 for lag in result.all_lags() if lag < 0)
    lines.append(
        f"converged: {'yes' if result.final_ok else 'NO'}; changes never seen: {lost}; "
        f"sync p50 lag ms: {percentile(every, 50):.1f}"
    )
    lines.append(
        f"sync p99 lag ms: {percentile(every, 99):.1f} coalescing ratio: {result.ratio:.3f}"
    )
    return lines


async def bench_sync(engine: Engine, url: str, seconds: float, *, limits: bool = False) -> Result:
    rate = 1000
    print(f"bench sync: 100 SKUs, {rate}/s ATS changes, 4 platform simulators, "
          f"rate limits {'on' if limits else 'lifted'}", flush=True)  # fmt: skip
    result = await run(engine, url=url, rate=rate, seconds=seconds, limits=limits)
    for line in report(result, rate, seconds):
        print(line)
    return result
