"""The `stockguard` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .cluster import EmbeddedCluster
from .config import Settings, tune_gc
from .connect import connect, is_empty, open_engine
from .embedded import EmbeddedServerError, EmbeddedValkey
from .errors import KeyspaceLayoutError


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.redis_url:
        settings = replace(settings, redis_url=args.redis_url)
    if args.data_dir:
        settings = replace(settings, data_dir=Path(args.data_dir))
    if args.appendfsync:
        settings = replace(settings, appendfsync=args.appendfsync)
    return settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockguard",
        description="Stock reservation engine: no oversell across channels.",
    )
    parser.add_argument(
        "--redis-url",
        help="Redis/Valkey (or cluster) URL; default: $REDIS_URL, "
        "else an embedded valkey-server in the data dir",
    )
    parser.add_argument(
        "--data-dir",
        help="where the embedded server keeps its data "
        "(default: $STOCKGUARD_DATA_DIR or ./stockguard-data)",
    )
    parser.add_argument(
        "--appendfsync",
        choices=["everysec", "always"],
        help="AOF fsync policy of the embedded server (default everysec)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="place, confirm, release and expire holds on a scratch server; print stock"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="run in the data dir instead, keeping what it makes (with REDIS_URL: always)",
    )
    commands.add_parser(
        "writer", help="persist the outbox to the SQL ledger ($DATABASE_URL) until stopped"
    )
    rebuild = commands.add_parser(
        "rebuild", help="restore an empty Redis from the SQL ledger (stop traffic first)"
    )
    rebuild.add_argument("--force", action="store_true", help="even over a non-empty keyspace")
    rebuild.add_argument("--sku", help="only set this SKU's on_hand and committed from the ledger")
    reconcile = commands.add_parser(
        "reconcile", help="compare Redis with the ledger per SKU and location; exit 1 on drift"
    )
    reconcile.add_argument("--json", action="store_true", help="print the drift as JSON")
    audit = commands.add_parser(
        "audit", help="check every invariant over Redis and the ledger; exit 1 on a violation"
    )
    audit.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="how long to wait for the writer to persist the outbox first (default 30)",
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument(
        "--no-sweep",
        action="store_true",
        help="do not settle expired holds first (they then still count in held)",
    )
    sweeper = commands.add_parser("sweeper", help="settle expired holds until stopped")
    sweeper.add_argument("--interval-ms", type=int, default=500)
    bench = commands.add_parser("bench", help="benchmarks that print ratios from one run")
    bench.add_argument("target", choices=["engine", "writer", "http", "sync"])
    bench.add_argument(
        "--seconds",
        type=float,
        help="engine, http: per measured path; sync: of load (default 5, http and sync 10)",
    )
    bench.add_argument("--concurrency", type=int, default=64, help="http: connections")
    bench.add_argument("--workers", type=int, default=1, help="http: uvicorn workers of serve")
    bench.add_argument(
        "--postgres",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL for the SQL baselines, used if reachable "
        "(default: $DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test)",
    )
    commands.add_parser("valkey", help="run the embedded valkey-server in the foreground")
    commands.add_parser("cluster", help="run a local 3-master cluster in the foreground")
    from api import cli as api_cli  # the composition root: the API's commands join here

    from . import feeds
    from .channels import cli as channels_cli

    api_cli.add_commands(commands)
    feeds.add_commands(commands)
    channels_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stockguard` console script."""
    args = _parser().parse_args(argv)
    settings = _settings(args)
    try:
        status = _run(args, settings)
        sys.stdout.flush()  # here, so that a reader gone by now is caught below
        return status
    except (KeyspaceLayoutError, EmbeddedServerError) as error:
        print(f"stockguard: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Whoever read our output stopped (`stockguard demo | head`): end quietly, and keep
        # the interpreter's own flush at exit from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in ("serve", "keys"):
        from api import cli as api_cli

        return api_cli.run(args, settings)
    if args.command in ("feed", "sync", "simulate", "rebalance"):
        return _channels(args, settings)
    if args.command == "demo":
        from .demo import demo

        asyncio.run(demo(settings, keep=args.keep))
    elif args.command == "writer":
        asyncio.run(_writer(settings))
    elif args.command in ("rebuild", "reconcile"):
        return asyncio.run(_recover(settings, args))
    elif args.command == "audit":
        from .audit import run

        return asyncio.run(
            run(settings, wait_s=args.wait_s, as_json=args.json, sweep=not args.no_sweep)
        )
    elif args.command == "sweeper":
        asyncio.run(_sweeper(settings, args.interval_ms))
    elif args.command == "bench":
        if args.target == "http":
            from api.bench_http import main as bench_http

            return bench_http(args, settings)
        postgres = args.postgres if args.postgres.startswith("postgres") else None
        seconds = (10.0 if args.target == "sync" else 5.0) if args.seconds is None else args.seconds
        return asyncio.run(_bench(settings, args.target, seconds, postgres))
    else:
        _foreground(settings, cluster=args.command == "cluster")
    return 0


def _channels(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "feed":
        return asyncio.run(_feed(settings, args))
    from .channels import cli as channels_cli

    return channels_cli.run(args, settings)


async def _feed(settings: Settings, args: argparse.Namespace) -> int:
    from . import feeds

    async with open_engine(settings) as engine:
        return await feeds.run(args, engine)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so loops finish their batch and exit cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _writer(settings: Settings) -> None:
    from .store import Store
    from .writer import Writer

    stop = _stop_on_signals()
    store = Store.from_url(settings.ledger_url)
    await store.open()
    try:
        async with open_engine(settings) as engine:
            print(f"writer: outbox -> {settings.ledger_url}", flush=True)
            logging.basicConfig(level=logging.INFO, format="writer: %(message)s")
            await Writer(engine.client, store).run(stop, report_every_s=10)
    finally:
        await store.close()


async def _recover(settings: Settings, args: argparse.Namespace) -> int:
    """`rebuild` and `reconcile`: Redis against the ledger."""
    from .rebuild import KeyspaceNotEmptyError, rebuild
    from .reconcile import format_table, reconcile, to_json
    from .store import Store

    store = Store.from_url(settings.ledger_url)
    await store.open()
    try:
        async with open_engine(settings) as engine:
            if args.command == "reconcile":
                drifts = await reconcile(engine.client, store)
                print(to_json(drifts).decode() if args.json else format_table(drifts))
                return 1 if drifts else 0
            try:
                report = await rebuild(
                    engine.client,
                    store,
                    force=args.force,
                    sku=args.sku,
                    retention_ms=settings.finished_retention_ms,
                    idempotency_ttl_ms=settings.idempotency_ttl_ms,
                )
            except KeyspaceNotEmptyError as error:
                print(f"rebuild: {error}", file=sys.stderr)
                return 2
            print(f"rebuild: {report}")
            return 0
    finally:
        await store.close()


async def _sweeper(settings: Settings, interval_ms: int) -> None:
    stop = _stop_on_signals()
    async with open_engine(settings) as engine:
        print(f"sweeper: settling expired holds every {interval_ms} ms", flush=True)
        while not stop.is_set():
            settled = await engine.sweep()
            if settled:
                print(f"sweeper: settled {settled} expired holds", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_ms / 1000)


async def _bench(settings: Settings, target: str, seconds: float, postgres: str | None) -> int:
    """Runs a benchmark on a scratch database: a fresh embedded server, or an empty REDIS_URL."""
    tune_gc()  # as `serve` runs the engine
    if settings.redis_url is None:
        # The benchmarks flush their database: never the user's data dir.
        with (
            tempfile.TemporaryDirectory(prefix="stockguard-bench-") as tmp,
            EmbeddedValkey(
                tmp, appendfsync=settings.appendfsync, jemalloc=settings.jemalloc
            ) as server,
        ):
            print(
                f"bench: embedded valkey-server at {server.url} "
                f"(AOF {settings.appendfsync}, {server.malloc})"
            )
            await _bench_on(server.url, settings, target, seconds, postgres, Path(tmp))
        return 0
    client = await connect(settings.redis_url)
    try:
        if not await is_empty(client):
            print(
                f"bench: {settings.redis_url} is not empty; the benchmark flushes its "
                "database, so point it at an empty one",
                file=sys.stderr,
            )
            return 2
    finally:
        await client.aclose()
    print(f"bench: {settings.redis_url}")
    with tempfile.TemporaryDirectory(prefix="stockguard-bench-") as tmp:
        await _bench_on(settings.redis_url, settings, target, seconds, postgres, Path(tmp))
    return 0


async def _bench_on(
    url: str, settings: Settings, target: str, seconds: float, postgres: str | None, tmp: Path
) -> None:
    from .bench import bench_engine
    from .bench_writer import bench_writer
    from .engine import Engine

    client = await connect(url)
    try:
        if target == "engine":
            await bench_engine(Engine(client, settings), seconds, postgres_dsn=postgres)
        elif target == "sync":
            from .channels.bench import bench_sync

            await bench_sync(Engine(client, settings), url, seconds)
        else:
            await bench_writer(client, sqlite_dir=tmp / "ledger", postgres_dsn=postgres)
        await client.flushdb()
    finally:
        await client.aclose()


def _foreground(settings: Settings, *, cluster: bool) -> None:
    data_dir = settings.data_dir / ("cluster" if cluster else "valkey")
    server: EmbeddedValkey | EmbeddedCluster = (
        EmbeddedCluster(data_dir)
        if cluster
        else EmbeddedValkey(data_dir, appendfsync=settings.appendfsync, jemalloc=settings.jemalloc)
    )
    with server:
        print(f"REDIS_URL={server.url}  (data in {data_dir}; Ctrl-C stops it cleanly)", flush=True)
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)


if __name__ == "__main__":
    sys.exit(main())
