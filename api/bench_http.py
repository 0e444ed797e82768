"""`stockguard bench http`: POST /v1/holds on one hot SKU against GET /v1/whoami, same run.

GET /v1/whoami is the ceiling: the same app, the same key check, middleware and JSON
response, with no engine call. Both run on a real `stockguard serve` (embedded Valkey,
SQLite ledger, writer and sweeper, uvicorn) started in a temporary directory, so the
user's data, REDIS_URL, DATABASE_URL and the STOCKGUARD_* settings are never used.

The load comes from a separate process, so it shares neither the server's GIL nor its
event loop: `--concurrency` keep-alive HTTP/1.1 connections, one request in flight on
each, requests pre-encoded, answers parsed no further than the status line and
Content-Length.
The paths alternate in rounds (bare, hold, bare, hold, ...) so that noise on a shared
machine weighs on both alike; only 2xx answers count, anything else is an error.

The last line is `hold/bare http ratio: X.XX`, hold req/s over bare req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import httpx

from engine.config import Settings

LOCATION, CHANNEL, SKU = "WH1", "web", "HOT"
STOCK = 1_000_000_000
TTL_MS = 24 * 3600 * 1000  # no hold expires mid-run, so the sweeper stays idle
ROUNDS = 4
WARMUP_S = 0.5
LABELS = {"bare": "bare GET /v1/whoami", "hold": "hold POST /v1/holds"}
_BANNER = re.compile(r"stockguard serving (http://[\d.]+:(\d+)) ")
_KEY = re.compile(r"\bsg_[0-9a-f]{8}_[A-Za-z0-9_-]+")
_STRIPPED = ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")

Out = Callable[[str], Any]


# -- the server ---------------------------------------------------------------------------


def _log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""


def _banner(proc: subprocess.Popen[bytes], stdout: Path, log: Path) -> tuple[str, int, str]:
    """(url, port, operator key) from serve's banner, once it is printed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = stdout.read_text(errors="replace") if stdout.exists() else ""
        if (served := _BANNER.search(text)) and (key := _KEY.search(text)):
            return served[1], int(served[2]), key[0]
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{_log_tail(log)}")
        time.sleep(0.05)
    raise RuntimeError(f"serve printed no banner with a key in 60 s:\n{_log_tail(log)}")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:  # the socket is bound before the banner, but listens once uvicorn runs
            ready = httpx.get(f"{url}/readyz")
            if ready.status_code == 200:
                return
            status = ready.text
        except httpx.TransportError as error:
            status = repr(error)
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"serve is not ready after 60 s: {status}\n{_log_tail(log)}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_serve(data_dir: Path, workers: int, appendfsync: str) -> Iterator[tuple[str, int, str]]:
    """A `stockguard serve` in its own process group; stopped by SIGTERM, as a user would."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _STRIPPED and not k.startswith("STOCKGUARD_")
    }
    stdout, log = data_dir / "serve.out", data_dir / "serve.log"
    command = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--data-dir", str(data_dir), "--workers", str(workers)]
    command += ["--appendfsync", appendfsync]
    with stdout.open("wb") as out, log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
    try:
        url, port, key = _banner(proc, stdout, log)
        _wait_ready(proc, url, log)
        yield url, port, key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _setup(client: httpx.Client) -> None:
    """A location, channel `web` over it, and SKU `HOT` with STOCK units received."""
    for method, path, body in (
        ("PUT", f"/v1/locations/{LOCATION}", None),
        ("PUT", f"/v1/channels/{CHANNEL}", {"locations": [LOCATION]}),
        ("PUT", f"/v1/skus/{SKU}", {}),
        ("POST", f"/v1/stock/{SKU}/receive", {"location": LOCATION, "qty": STOCK}),
    ):
        client.request(method, path, json=body).raise_for_status()


def _requests(port: int, key: str) -> dict[str, bytes]:
    head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
    body = f'{{"channel":"{CHANNEL}","lines":[{{"sku":"{SKU}","qty":1}}],"ttl_ms":{TTL_MS}}}'
    return {
        "bare": f"GET /v1/whoami HTTP/1.1\r\n{head}\r\n".encode(),
        "hold": (
            f"POST /v1/holds HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode(),
    }


# -- the load generator (its own process) ------------------------------------------------


@dataclass
class Tally:
    """One path's answers: latencies (s) and errors inside the rounds; every 2xx at all."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    ok_total: int = 0


class _Round:
    def __init__(self, request: bytes, tally: Tally, connections: int) -> None:
        self.request, self.tally, self.busy = request, tally, connections
        self.open = True
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answered(self, status: int, latency: float) -> None:
        ok = 200 <= status < 300
        self.tally.ok_total += ok
        if self.open:  # answers to requests still in flight at the end are not counted
            if ok:
                self.tally.latencies.append(latency)
            else:
                self.tally.errors[status] += 1

    def finish(self, error: BaseException | None = None) -> None:
        self.busy -= 1
        if self.idle.done():
            return
        if error is not None:
            self.idle.set_exception(error)
        elif self.busy == 0:
            self.idle.set_result(None)


class _Client(asyncio.Protocol):
    """One keep-alive connection with one request in flight; sends the next on each answer."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.round: _Round | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self, round_: _Round) -> None:
        self.round = round_
        self.sent_at = time.perf_counter()
        self.transport.write(round_.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        line_end = head.find(b"\r\n", at + 2)
        size = end + 4 + int(head[at + 17 : line_end if line_end > 0 else None])
        if len(buffer) < size:
            return
        status = int(buffer[9:12])
        del buffer[:size]
        round_ = self.round
        assert round_ is not None
        round_.answered(status, time.perf_counter() - self.sent_at)
        if round_.open:
            self.start(round_)
        else:
            self.round = None
            round_.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.round is not None:
            self.round.finish(exc or ConnectionResetError("the server closed a connection"))


async def _round(clients: list[_Client], request: bytes, seconds: float, tally: Tally) -> None:
    round_ = _Round(request, tally, len(clients))
    start = time.perf_counter()
    for client in clients:
        client.start(round_)
    await asyncio.sleep(seconds)
    round_.open = False
    tally.seconds += time.perf_counter() - start
    await asyncio.wait_for(round_.idle, 60)


async def _load(
    port: int, requests: dict[str, bytes], connections: int, round_s: float
) -> tuple[dict[str, Tally], float, int]:
    """(tallies, CPU share of this process in the rounds, hold 2xx answers in all)."""
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(_Client, "127.0.0.1", port)
        clients.append(client)
    warm = {name: Tally() for name in requests}
    for name, request in requests.items():
        await _round(clients, request, WARMUP_S, warm[name])
    tallies = {name: Tally() for name in requests}
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(ROUNDS):
        for name, request in requests.items():
            await _round(clients, request, round_s, tallies[name])
    cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    for client in clients:
        client.transport.close()
    return tallies, cpu_share, warm["hold"].ok_total + tallies["hold"].ok_total


def _generate(
    port: int, requests: dict[str, bytes], connections: int, round_s: float, conn: Connection
) -> None:
    """The load process: runs every round and sends back what _load returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the bench, which stops us
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        conn.send(runner.run(_load(port, requests, connections, round_s)))


def _drive(
    port: int, requests: dict[str, bytes], connections: int, round_s: float
) -> tuple[dict[str, Tally], float, int]:
    parent, child = multiprocessing.get_context("spawn").Pipe(duplex=False)
    process = multiprocessing.get_context("spawn").Process(
        target=_generate, args=(port, requests, connections, round_s, child), name="bench-load"
    )
    process.start()
    child.close()
    try:
        if not parent.poll(2 * ROUNDS * round_s + 2 * WARMUP_S + 120):
            raise RuntimeError("the load process sent no results")
        result: tuple[dict[str, Tally], float, int] = parent.recv()
        process.join(10)
        return result
    except EOFError:
        process.join(10)
        raise RuntimeError(f"the load process died (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():  # interrupted, or stuck: it must not outlive the server
            process.kill()
        process.join()


# -- the benchmark ------------------------------------------------------------------------


def _percentile_ms(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return 1000 * ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def _report(tallies: dict[str, Tally], out: Out) -> dict[str, float]:
    results: dict[str, float] = {"errors": 0}
    out(f"{'path':<22} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, tally in tallies.items():
        done, errors = len(tally.latencies), sum(tally.errors.values())
        rate = done / tally.seconds
        p50, p99 = (_percentile_ms(tally.latencies, q) if done else math.nan for q in (0.5, 0.99))
        results |= {name: rate, f"{name} p50 ms": p50, f"{name} p99 ms": p99}
        results["errors"] += errors
        out(f"{LABELS[name]:<22} {done:>9,} {rate:>9,.0f} {p50:>8.2f} {p99:>8.2f} {errors:>7,}")
    for name, tally in tallies.items():
        if tally.errors:
            counts = ", ".join(f"{n:,} x {status}" for status, n in sorted(tally.errors.items()))
            out(f"errors: {LABELS[name]}: {counts}")
    return results


def bench_http(
    seconds: float = 10.0,
    concurrency: int = 64,
    workers: int = 1,
    *,
    appendfsync: str = "everysec",
    out: Out = print,
) -> dict[str, float]:
    """Prints req/s, p50 and p99 of both paths, then the ratio line last, as the issue says."""
    round_s = seconds / ROUNDS
    with (
        tempfile.TemporaryDirectory(prefix="stockguard-bench-http-") as tmp,
        running_serve(Path(tmp), workers, appendfsync) as (url, port, key),
        httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as client,
    ):
        _setup(client)
        out(
            f"bench: stockguard serve at {url} ({workers} worker{'s' * (workers > 1)}), "
            f"embedded valkey-server and SQLite ledger in {tmp}"
        )
        out(
            f"bench: {concurrency} keep-alive connections from a separate load process; "
            f"{ROUNDS} alternating rounds of {round_s:g} s per path after a {WARMUP_S:g} s warm-up"
        )
        tallies, cpu_share, placed = _drive(port, _requests(port, key), concurrency, round_s)
        ats = client.get(f"/v1/stock/{SKU}", params={"channel": CHANNEL}).json()["ats"][CHANNEL]
    results = _report(tallies, out)
    stock_ok = ats == STOCK - placed
    out(
        f"load process: {cpu_share:.0%} of one core; stock check: {placed:,} holds placed, "
        f"ATS {CHANNEL} {ats:,} ({'ok' if stock_ok else f'expected {STOCK - placed:,}'})"
    )
    results["errors"] += not stock_ok
    if results["errors"]:
        out("bench: this run had errors; its figures are not to be trusted")
    results["ratio"] = results["hold"] / results["bare"]
    out(f"hold/bare http ratio: {results['ratio']:.2f}")
    return results


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`stockguard bench http`: exit code 1 if any request failed."""
    # serve runs in a session of its own: on SIGTERM as on Ctrl-C, unwind to stop it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = bench_http(
        10.0 if args.seconds is None else args.seconds,
        args.concurrency,
        args.workers,
        appendfsync=settings.appendfsync,
    )
    return 1 if results["errors"] else 0
