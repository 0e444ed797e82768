"""`stockguard sync`, `stockguard simulate channels` and `stockguard rebalance`.

sync and rebalance read the same config file as serve (`--config`, else
$STOCKGUARD_CONFIG): its [channels.<name>] tables and its [rebalance] table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from ..cli import _stop_on_signals
from ..config import Settings
from ..connect import open_engine
from .base import ChannelConfig
from .registry import ConfigError, channel_configs


def add_commands(commands: Any) -> None:
    sync = commands.add_parser(
        "sync", help="run the channel worker: inbound orders and outbound availability sync"
    )
    sync.add_argument(
        "--config", help="the TOML file with [channels.*] (default $STOCKGUARD_CONFIG)"
    )
    sync.add_argument(
        "--resync", action="store_true",
        help="push every listed SKU's ATS to every channel now, even unchanged values, then exit",
    )  # fmt: skip
    sync.add_argument("--channel", action="append", help="with --resync: only these channels")
    simulate = commands.add_parser("simulate", help="local platform simulators")
    what = simulate.add_subparsers(dest="simulate", required=True)
    channels = what.add_parser(
        "channels", help="run Shopify, Amazon, eBay, Etsy and web-shop simulators until Ctrl-C"
    )
    channels.add_argument("--skus", type=int, default=5, help="SKUs to list: SIM-001, ...")
    channels.add_argument("--stock", type=int, default=0, help="with --define: units received")
    channels.add_argument(
        "--define", action="store_true",
        help="define location 'warehouse', the five channels and the SKUs in the engine",
    )  # fmt: skip
    channels.add_argument("--serve-url", default="http://127.0.0.1:8000", help="for webhooks")
    channels.add_argument("--write-config", default="channels.toml", help="[channels.*] file")
    channels.add_argument("--no-limits", action="store_true", help="lift the rate limits")
    rebalance = commands.add_parser(
        "rebalance", help="move caps and fences toward each channel's sales velocity"
    )
    rebalance.add_argument("--config", help="the TOML file with [rebalance]")
    rebalance.add_argument("--once", action="store_true", help="one pass, print the changes")


def _file(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    path = args.config or os.environ.get("STOCKGUARD_CONFIG")
    if not path:
        raise SystemExit(f"{args.command}: give --config FILE (or set STOCKGUARD_CONFIG)")
    with open(path, "rb") as file:
        return tomllib.load(file), Path(path).resolve().parent


def configs_of(args: argparse.Namespace) -> list[ChannelConfig]:
    table, base = _file(args)
    try:
        configs = channel_configs(table.get("channels", {}), base)
    except ConfigError as error:
        raise SystemExit(f"sync: {error}") from None
    if not configs:
        raise SystemExit("sync: the config file has no [channels.*] tables")
    return configs


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "sync":
        return asyncio.run(_sync(settings, configs_of(args), args))
    if args.command == "rebalance":
        return asyncio.run(_rebalance(settings, args))
    return asyncio.run(_simulate(settings, args))


async def _sync(settings: Settings, configs: list[ChannelConfig], args: argparse.Namespace) -> int:
    from .worker import ChannelWorker, connectors

    if args.channel:
        configs = [c for c in configs if c.channel in args.channel]
    async with open_engine(settings) as engine, connectors(configs) as connected:
        worker = ChannelWorker(engine, connected)
        if not args.resync:
            await worker.run(_stop_on_signals())
            return 0
        await worker.sync.load()
        await worker.sync.resync(force=True)
        stop = asyncio.Event()
        pushers = [asyncio.create_task(c.run(stop)) for c in worker.sync.channels.values()]
        settled = await worker.sync.settled(timeout_s=600)
        stop.set()
        await asyncio.gather(*pushers)
        for name, channel in worker.sync.channels.items():
            s = channel.stats
            print(
                f"{name:10} pushed {s.pushes:>6}  refused {s.failures:>4}  left {channel.backlog()}"
            )
        await worker.sync.save_stats()
        return (
            0 if settled and not any(c.stats.failures for c in worker.sync.channels.values()) else 1
        )


async def _rebalance(settings: Settings, args: argparse.Namespace) -> int:
    from ..store import Store
    from .rebalance import RebalanceConfig, Rebalancer

    table, _ = _file(args)
    if "rebalance" not in table:
        raise SystemExit("rebalance: the config file has no [rebalance] table")
    config = msgspec.convert(table["rebalance"], RebalanceConfig)
    store = Store.from_url(settings.ledger_url)
    await store.open()
    try:
        async with open_engine(settings) as engine:
            rebalancer = Rebalancer(engine, store, config)
            if not args.once:
                await rebalancer.run(_stop_on_signals())
                return 0
            for change in await rebalancer.run_once():
                moved = f"{change.old_qty} -> {change.new_qty} ({change.velocity:.4f}/s)"
                print(f"{change.sku} {change.channel} {change.kind}: {moved}")
    finally:
        await store.close()
    return 0


async def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from .simulate import CHANNELS, plan, running, toml

    skus = [f"SIM-{n:03d}" for n in range(1, args.skus + 1)]
    planned = plan(skus, args.serve_url.rstrip("/"), limits=not args.no_limits)
    if args.define:
        async with open_engine(settings) as engine:
            await engine.define_location("warehouse")
            for name in CHANNELS:
                await engine.define_channel(name, ["warehouse"])
            for sku in skus:
                await engine.define_sku(sku)
                if args.stock:
                    await engine.receive(sku, "warehouse", args.stock)
    async with running(planned) as sims:
        Path(args.write_config).write_text(toml(sims))
        for sim in sims:
            print(f"{sim.name:8} {sim.config.platform.value:8} {sim.url}   "
                  f"storefront: POST {sim.url}/_sim/orders {{\"sku\", \"qty\"}}")  # fmt: skip
        print(f"channel config written to {args.write_config}: "
              f"stockguard serve --config {args.write_config}", flush=True)  # fmt: skip
        with contextlib.suppress(asyncio.CancelledError):
            await _stop_on_signals().wait()
    return 0
