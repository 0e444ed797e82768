"""`stockguard serve`: the embedded Valkey (unless REDIS_URL), the ledger, the HTTP API,
the writer and the expiry sweeper, in one command.

Processes: this one supervises. It starts the Valkey child, then a background child
that runs the writer and the sweeper, then uvicorn (in this process for one worker,
or N worker processes). On SIGTERM or Ctrl-C it stops in order: uvicorn finishes the
requests in flight; the background child drains the outbox into the ledger; Valkey
stops last (its AOF is fsynced on the way down).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from engine.channels.base import ChannelConfig
from engine.channels.rebalance import RebalanceConfig, Rebalancer
from engine.channels.registry import ConfigError, channel_configs
from engine.config import Settings, tune_gc
from engine.embedded import EmbeddedValkey
from engine.errors import ValidationError
from engine.store import Store

from . import logs
from .auth import Role, create_key

_SERVE_ENV = "STOCKGUARD_SERVE_JSON"  # the resolved options, handed to worker processes


@dataclass(frozen=True)
class Options:
    """Every setting of `serve`: a flag, an environment variable, or a key of the TOML file."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    redis_url: str | None = None
    database_url: str | None = None
    data_dir: str = "stockguard-data"
    appendfsync: str = "everysec"
    idempotency_ttl_ms: int = 24 * 3600 * 1000
    finished_retention_ms: int = 24 * 3600 * 1000
    max_batch: int = 32
    jemalloc: bool = True
    max_body_bytes: int = 1 << 20
    sweep_interval_ms: int = 500
    writer: bool = True
    sweeper: bool = True
    log_level: str = "info"
    access_log: bool = True
    sync: bool = True
    resync_interval_s: int = 60
    # The [channels.<name>] tables of the config file (engine/channels/registry.py).
    channels: dict[str, Any] = field(default_factory=dict)
    rebalance: dict[str, Any] = field(default_factory=dict)  # [rebalance]: see rebalance.py
    config_dir: str = "."  # where listings_csv paths are relative to

    def channel_configs(self) -> list[ChannelConfig]:
        return channel_configs(self.channels, Path(self.config_dir))

    def settings(self) -> Settings:
        return Settings(
            redis_url=self.redis_url,
            database_url=self.database_url,
            data_dir=Path(self.data_dir),
            appendfsync=self.appendfsync,
            idempotency_ttl_ms=self.idempotency_ttl_ms,
            finished_retention_ms=self.finished_retention_ms,
            max_batch=self.max_batch,
            jemalloc=self.jemalloc,
        )


HELP = {
    "host": "address to listen on",
    "port": "port to listen on (0: any free port; the banner prints it)",
    "workers": "uvicorn worker processes",
    "redis_url": "Redis/Valkey (or cluster) URL; unset: an embedded valkey-server",
    "database_url": "ledger database (postgresql://...); unset: SQLite in the data dir",
    "data_dir": "where the embedded Valkey and the SQLite ledger keep their files",
    "appendfsync": "AOF fsync policy of the embedded Valkey: everysec or always",
    "idempotency_ttl_ms": "how long an Idempotency-Key or operation id replays",
    "finished_retention_ms": "how long finished holds stay readable",
    "max_batch": "most operations sent in one pipeline of script calls",
    "jemalloc": "run the embedded Valkey on the system's jemalloc, where there is one",
    "max_body_bytes": "largest request body accepted (larger: 413)",
    "sweep_interval_ms": "how often the sweeper settles expired holds",
    "writer": "run the outbox writer in this serve",
    "sweeper": "run the expiry sweeper in this serve",
    "log_level": "debug, info, warning or error",
    "access_log": "log one JSON line per request",
    "sync": "run the channel worker (inbound orders, outbound sync) in this serve",
    "resync_interval_s": "how often the channel worker re-reads every listed SKU",
}
_FILE_ONLY = ("channels", "rebalance", "config_dir")  # tables of the config file, not flags
ENV = {"redis_url": "REDIS_URL", "database_url": "DATABASE_URL"}


def _env_name(name: str) -> str:
    return ENV.get(name, f"STOCKGUARD_{name.upper()}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="a TOML file of these settings (default: $STOCKGUARD_CONFIG)"
    )
    # SUPPRESS: a flag not given leaves no None behind that would hide `stockguard
    # --data-dir D serve` (the main parser's --data-dir, --redis-url, --appendfsync).
    for f in fields(Options):
        if f.name in _FILE_ONLY:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{HELP[f.name]} [${_env_name(f.name)}; default {f.default}]"
        common: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(flag, type=int if f.type == "int" else str, **common)


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Options:
    """Flags over environment variables over the TOML file over defaults."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    config = args.config or environ.get("STOCKGUARD_CONFIG")
    if config:
        with open(config, "rb") as file:
            values.update({k.replace("-", "_"): v for k, v in tomllib.load(file).items()})
        values["config_dir"] = str(Path(config).resolve().parent)
    for f in fields(Options):
        if f.name in _FILE_ONLY:
            continue
        if (raw := environ.get(_env_name(f.name))) is not None and raw != "":
            values[f.name] = raw.lower() in ("1", "true", "yes", "on") if f.type == "bool" else raw
        if (flag := getattr(args, f.name, None)) is not None:
            values[f.name] = flag
    unknown = set(values) - {f.name for f in fields(Options)}
    if unknown:
        raise SystemExit(f"serve: unknown settings in {config}: {', '.join(sorted(unknown))}")
    try:
        options = msgspec.convert(values, Options, strict=False)
        options.channel_configs()  # a bad [channels.*] table stops serve before it starts
        if options.rebalance:
            msgspec.convert(options.rebalance, RebalanceConfig)
    except (msgspec.ValidationError, ConfigError, ValidationError) as error:
        raise SystemExit(f"serve: bad setting: {error}") from None
    return options


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory under --workers N)."""
    from .app import create_app

    options = msgspec.json.decode(os.environ[_SERVE_ENV], type=Options)
    logs.configure(options.log_level)
    tune_gc()
    return create_app(
        options.settings(),
        max_body_bytes=options.max_body_bytes,
        access_log=options.access_log,
        channels=options.channel_configs(),
    )


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after it stops: serve goes on to
    drain the writer and stop Valkey, in that order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_STOP = (signal.SIGINT, signal.SIGTERM)
_STOP_BACKGROUND = signal.SIGUSR1  # serve's own word to the background child


def _background(options_json: bytes, parent: int) -> None:
    """The background child: the writer and the sweeper, until the parent says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches serve; serve tells us
    options = msgspec.json.decode(options_json, type=Options)
    logs.configure(options.log_level)
    tune_gc()
    asyncio.run(_run_background(options, parent))


async def _run_background(options: Options, parent: int) -> None:
    import logging

    from engine.connect import connect
    from engine.engine import Engine
    from engine.writer import Writer

    from .metrics import record_sweep

    log = logging.getLogger("stockguard.serve")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(_STOP_BACKGROUND, stop.set)
    # A SIGTERM sent to the whole process group or cgroup (kill -- -PGID, systemd) reaches
    # us too: ignore it while serve lives, or the writer would drain and leave before
    # uvicorn has finished the requests in flight; serve stops us once they are done.
    loop.add_signal_handler(signal.SIGTERM, _stop_if_orphaned, stop, parent)
    settings = options.settings()
    client = await connect(settings.redis_url or "")
    store = Store.from_url(settings.ledger_url)
    await store.open()
    engine = Engine(client, settings)

    async def sweep() -> None:
        while not stop.is_set():
            if os.getppid() != parent:  # serve died without telling us
                stop.set()
            try:
                await record_sweep(client, await engine.sweep())
            except Exception:
                log.exception("sweep failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.sweep_interval_ms / 1000)

    writer = Writer(client, store)
    configs = options.channel_configs()

    async def channels(stop: asyncio.Event) -> None:
        from engine.channels import worker

        await worker.run(engine, configs, stop, resync_interval_s=options.resync_interval_s)

    try:
        tasks = [sweep()] if options.sweeper else []
        if options.writer:
            tasks.append(_restarting("writer", lambda s: writer.run(s, report_every_s=10), stop))
        if options.sync and configs:
            tasks.append(_restarting("channel worker", channels, stop))
        if options.rebalance:
            rebalancer = Rebalancer(
                engine, store, msgspec.convert(options.rebalance, RebalanceConfig)
            )
            tasks.append(_restarting("rebalancer", rebalancer.run, stop))
        await asyncio.gather(*tasks)
        if options.writer:
            drained = await writer.drain()
            log.info("writer drained", extra={"entries": drained})
    finally:
        await store.close()
        await client.aclose()


async def _restarting(
    name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Runs a background loop until stop; after an unexpected error (Redis away, a bug) it
    is logged and the loop starts again, so the writer or the sync never silently stops.
    The writer retries ledger outages itself."""
    import logging

    while not stop.is_set():
        try:
            await run(stop)
        except Exception:
            logging.getLogger("stockguard.serve").exception("%s failed; again in 1 s", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def _stop_if_orphaned(stop: asyncio.Event, parent: int) -> None:
    if os.getppid() != parent:
        stop.set()


async def _first_key(settings: Settings) -> str | None:
    """At first start (no live keys), an operator key; printed once, stored hashed."""
    store = Store.from_url(settings.ledger_url)
    await store.open()
    try:
        if any(row.revoked_ms is None for row in await store.api_keys()):
            return None
        key, _row = await create_key(store, "bootstrap", Role.OPERATOR)
        return key
    finally:
        await store.close()


async def _check_keyspace(url: str) -> None:
    """Raises KeyspaceLayoutError for a keyspace of another layout, before anything starts."""
    from engine.connect import connect

    client = await connect(url)
    await client.aclose()


def _banner(options: Options, port: int, redis_note: str, key: str | None) -> str:
    base = f"http://{options.host}:{port}"
    ledger = options.settings().ledger_url
    lines = [
        f"stockguard serving {base} ({options.workers} worker{'s' * (options.workers > 1)})",
        f"  docs    {base}/docs   openapi {base}/openapi.json   metrics {base}/metrics",
        f"  redis   {options.redis_url}{redis_note}",
        f"  ledger  {ledger}",
        f"  data    {Path(options.data_dir).resolve()}",
    ]
    if key:
        lines += [
            "  no API keys yet: created an operator key. It is shown this once; store it now:",
            f"    {key}",
            "  (more keys: stockguard keys create --role checkout|operator|read-only)",
        ]
    return "\n".join(lines)


def serve(argv_options: Options) -> int:
    options = argv_options
    logs.configure(options.log_level)
    embedded = None
    note = ""
    if options.redis_url is None:
        data = Path(options.data_dir) / "valkey"
        embedded = EmbeddedValkey(data, appendfsync=options.appendfsync, jemalloc=options.jemalloc)
        embedded.start()
        options = replace(options, redis_url=embedded.url)
        server = f"embedded valkey-server, AOF {options.appendfsync}, {embedded.malloc}"
        note = f"  ({server}, data in {data})"
    background = None
    try:
        asyncio.run(_check_keyspace(options.redis_url or ""))
        key = asyncio.run(_first_key(options.settings()))
        encoded = msgspec.json.encode(options)
        if options.writer or options.sweeper or options.rebalance or options.channels:
            spawn = multiprocessing.get_context("spawn")
            background = spawn.Process(
                target=_background, args=(encoded, os.getpid()), name="stockguard-background"
            )
            # The child starts with SIGTERM ignored (an ignored signal stays ignored across
            # exec), so a group SIGTERM during its imports cannot stop it before the writer
            # has drained; it installs its own handler once running.
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                background.start()
            finally:
                signal.signal(signal.SIGTERM, previous)
        os.environ[_SERVE_ENV] = encoded.decode()
        if options.workers > 1:  # workers write their samples where /metrics adds them up
            metrics_dir = Path(options.data_dir) / "prometheus"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        sock = _bind(options.host, options.port)
        print(_banner(options, sock.getsockname()[1], note, key), flush=True)
        _run_http(options, sock)
    finally:
        if background is not None and background.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(background.pid, _STOP_BACKGROUND)  # the writer drains, then exits
            background.join(60)
        if embedded is not None:
            embedded.stop()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _run_http(options: Options, sock: socket.socket) -> None:
    config = uvicorn.Config(
        "api.serve:worker_app",
        factory=True,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        workers=options.workers,
        timeout_graceful_shutdown=30,
    )
    if options.workers == 1:
        _Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[sock]).run()


def main(args: argparse.Namespace) -> int:
    return serve(resolve(args))
