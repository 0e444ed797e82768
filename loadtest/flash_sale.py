"""Flash-sale rehearsal: thousands of buyers queue for a few hundred units over real HTTP.

    python loadtest/flash_sale.py                       # its own serve: 10,000 buyers, 500 units
    python loadtest/flash_sale.py --url http://127.0.0.1:8000 --key sg_...    # a running serve

Each buyer joins the sale's queue, polls after the `poll_after_ms` the server asks for
until admitted or sold out, holds 1 to `limit` units with the admission token and
confirms; a tenth are greedy and try to pass the limit. Then the server is asked what
sold (stock, the ledger's sale moves, each sold hold's customer), and its own serve is
audited. The last line is `flash-sale oversold: N limit-violations: N sold: N`; the exit
status is 1 unless exactly --units sold, none oversold, nobody got more than --limit, no
request failed and the audit passed. loadtest/README.md tells more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from http_client import Http, Response, seg
from serving import audit

LOCATION, CHANNEL = "flash-wh", "flash-web"
HOLD_TTL_MS = 120_000  # a checkout window: no hold expires during the rehearsal
GREEDY_SHARE = 0.1
ROUNDS = 3  # queueing at most: a greedy buyer comes back, an expired admission queues again
MONITOR_S = 0.25  # how often the sale's `admitted` counter is read
LEDGER_WAIT_S = 30.0
VERBS = ("join", "poll", "hold", "confirm")
T = TypeVar("T")


# -- the sale and its buyers ---------------------------------------------------------------


@dataclass
class Sale:
    name: str
    sku: str
    units: int
    limit: int
    rate_per_s: float
    max_active: int
    poll_ms: int
    token_ttl_ms: int
    start_ms: int = 0

    def body(self) -> dict[str, Any]:
        fields = ("rate_per_s", "max_active", "token_ttl_ms", "limit", "poll_ms", "start_ms")
        return {f: getattr(self, f) for f in fields} | {
            "channel": CHANNEL,
            "skus": [self.sku],
            "end_ms": self.start_ms + 3_600_000,
            "idle_ms": max(10_000, 10 * self.poll_ms),
        }


@dataclass
class Tally:
    """What the buyers saw. Times are time.time() seconds; latencies are seconds."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VERBS})
    queued: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VERBS})
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    bought: Counter[str] = field(default_factory=Counter)  # customer -> units confirmed
    held_at: list[float] = field(default_factory=list)  # when each hold that took units answered
    waiting_at: list[float] = field(default_factory=list)  # when polls answered waiting were sent
    knew: list[tuple[float, str]] = field(default_factory=list)  # told sold out: when, by what
    admitted: list[tuple[float, int]] = field(default_factory=list)  # the sale's counter


class Buyers:
    def __init__(self, http: Http, sale: Sale) -> None:
        self.http, self.sale, self.tally = http, sale, Tally()
        self.queue = f"/v1/sales/{seg(sale.name)}/queue"

    async def call(self, verb: str, method: str, path: str, body: Any = None) -> Response:
        """The answer (status 0: none came); unexpected ones are counted as errors."""
        try:
            response = await self.http.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError) as error:
            self.tally.errors[f"{verb}: {error!r}"] += 1
            return Response(0, b"", 0.0)
        self.tally.latencies[verb].append(response.seconds)
        self.tally.queued[verb].append(response.queued + response.seconds)
        if not response.ok and verb in ("join", "poll", "confirm"):
            self.tally.errors[f"{verb}: {response.status} {response.kind()}"] += 1
        return response

    async def buyer(self, n: int, rng: random.Random) -> None:
        customer = f"{self.sale.name}-buyer-{n}"
        greedy = rng.random() < GREEDY_SHARE
        qty = self.sale.limit + 1 if greedy else rng.randint(1, self.sale.limit)
        for _ in range(ROUNDS):
            token = await self.admission(customer)
            outcome = await self.buy(customer, token, qty) if token else "done"
            if outcome == "bought" and greedy:
                qty = 1  # one more, past the limit
            elif outcome != "requeue":
                return

    async def admission(self, customer: str) -> str | None:
        """Queues until admitted: the admission token, or None (sold out or a failure)."""
        response = await self.call("join", "POST", self.queue, {"customer": customer})
        ticket, how = response.json(), "join"
        while response.ok and ticket["state"] == "waiting":
            await asyncio.sleep(ticket["poll_after_ms"] / 1000)
            sent, how = time.time(), "poll"
            path = f"{self.queue}/{seg(ticket['ticket'])}?customer={seg(customer)}"
            response = await self.call("poll", "GET", path)
            ticket = response.json()
            if response.ok and ticket["state"] == "waiting":
                self.tally.waiting_at.append(sent)
        if not response.ok:
            return None
        self.tally.outcomes[f"ticket {ticket['state']}"] += 1
        if ticket["state"] == "sold_out":
            self.tally.knew.append((time.time(), how))
        return str(ticket["token"]) if ticket["state"] == "admitted" else None

    async def buy(self, customer: str, token: str, qty: int) -> str:
        """Holds with the admission, then confirms: bought, requeue or done."""
        body = {"channel": CHANNEL, "ttl_ms": HOLD_TTL_MS, "customer": customer, "admission": token}
        while qty > 0:
            body["lines"] = [{"sku": self.sale.sku, "qty": qty}]
            response = await self.call("hold", "POST", "/v1/holds", body)
            if response.status == 201:
                self.tally.held_at.append(time.time())
                return await self.confirm(customer, response.json())
            kind, data = response.kind(), response.json()
            self.tally.outcomes[f"hold refused: {kind}"] += 1
            if kind == "limit-exceeded":  # as many as the limit still allows
                qty = min(qty - 1, data["limit"] - data["used"])
            elif kind == "insufficient-stock":  # what is left
                qty = min(qty - 1, data["available"])
                if not qty:
                    self.tally.knew.append((time.time(), "hold"))
            elif kind == "admission-expired":
                return "requeue"
            else:
                if response.status:  # no answer at all is counted already
                    self.tally.errors[f"hold: {response.status} {kind}"] += 1
                return "done"
        return "done"

    async def confirm(self, customer: str, hold: dict[str, Any]) -> str:
        path = f"/v1/holds/{seg(hold['id'])}/confirm"
        response = await self.call("confirm", "POST", path, {"reference": f"order-{customer}"})
        if response.status != 200:
            return "done"
        self.tally.bought[customer] += sum(line["qty"] for line in hold["lines"])
        self.tally.outcomes["orders"] += 1
        return "bought"

    async def monitor(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            response = await self.http.request("GET", f"/v1/sales/{seg(self.sale.name)}")
            if response.status == 200:
                self.tally.admitted.append((time.time(), response.json()["admitted"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MONITOR_S)


async def define(http: Http, sale: Sale) -> None:
    """A location, a channel over it, the SKU with its units, and the sale."""

    async def call(method: str, path: str, body: Any) -> None:
        response = await http.request(method, path, body)
        if response.status >= 300:
            raise SystemExit(f"flash-sale: {method} {path}: {response.status} {response.body!r}")

    sku = seg(sale.sku)
    await call("PUT", f"/v1/locations/{LOCATION}", None)
    await call("PUT", f"/v1/channels/{CHANNEL}", {"locations": [LOCATION]})
    await call("PUT", f"/v1/skus/{sku}", {"buffer": 0})
    await call("POST", f"/v1/stock/{sku}/receive", {"location": LOCATION, "qty": sale.units})
    sale.start_ms = int(time.time() * 1000) + 500  # the first joins get places drawn at random
    await call("PUT", f"/v1/sales/{seg(sale.name)}", sale.body())


# -- what the server says was sold ---------------------------------------------------------


@dataclass
class Verdict:
    on_hand: int
    committed: int
    held: int
    ledger_sold: int  # units in the ledger's sale moves
    per_customer: Counter[str]  # units in sale moves, by the sold hold's customer
    errors: list[str] = field(default_factory=list)

    def oversold(self, units: int) -> int:
        beyond = (self.committed + self.held - self.on_hand, self.ledger_sold - units)
        return max(0, self.committed - units, *beyond)

    def violations(self, limit: int) -> int:
        return sum(1 for units in self.per_customer.values() if units > limit)


async def sale_moves(http: Http, sku: str) -> list[dict[str, Any]]:
    moves: list[dict[str, Any]] = []
    query, after = f"/v1/moves?sku={seg(sku)}&kind=sale&limit=1000", ""
    while True:
        page = (await http.request("GET", query + after)).json()
        moves += page["moves"]
        if not page["next"]:
            return moves
        after = f"&after={seg(page['next'])}"


async def verify(http: Http, sale: Sale) -> Verdict:
    """Stock from Redis; sale moves from the SQL ledger, once the writer has caught up."""
    response = await http.request("GET", f"/v1/stock/{seg(sale.sku)}")
    row = next(r for r in response.json()["locations"] if r["location"] == LOCATION)
    deadline = time.monotonic() + LEDGER_WAIT_S
    while True:
        moves = await sale_moves(http, sale.sku)
        ledger_sold = sum(move["committed_delta"] for move in moves)
        if ledger_sold == row["committed"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    holds = await asyncio.gather(
        *(http.request("GET", f"/v1/holds/{seg(move['hold_id'])}") for move in moves)
    )
    per_customer: Counter[str] = Counter()
    for move, hold in zip(moves, holds, strict=True):
        per_customer[hold.json().get("customer") or "?"] += move["committed_delta"]
    verdict = Verdict(row["on_hand"], row["committed"], row["held"], ledger_sold, per_customer)
    if ledger_sold != row["committed"]:
        verdict.errors.append(f"the ledger sold {ledger_sold}, Redis committed {row['committed']}")
    return verdict


# -- the summary ---------------------------------------------------------------------------


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def summary(t: Tally, sale: Sale, buyers: int, seconds: float) -> list[str]:
    tickets = ", ".join(f"{n:,} {k[7:]}" for k, n in sorted(t.outcomes.items()) if "ticket " in k)
    refused = ", ".join(f"{n:,} {k[14:]}" for k, n in sorted(t.outcomes.items()) if "refused" in k)
    admitted, rate = 0, 0.0
    if t.admitted and t.admitted[-1][1]:  # up to the sample where the counter stopped
        admitted = t.admitted[-1][1]
        last = next(at for at, n in t.admitted if n == admitted)
        rate = admitted / max(last - sale.start_ms / 1000, MONITOR_S)
    lines = [
        f"{buyers:,} buyers done in {seconds:.1f} s; their tickets: {tickets}",
        f"admitted {admitted:,} buyers at {rate:,.0f}/s (sale: rate_per_s {sale.rate_per_s:g}, "
        f"max_active {sale.max_active}, poll_ms {sale.poll_ms})",
        f"{'request':<8} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}   "
        "(p50, p99 ms with the wait for a connection)",
    ]
    for verb, values in t.latencies.items():
        p50, p99 = (percentile_ms(values, q) for q in (0.5, 0.99))
        q50, q99 = (percentile_ms(t.queued[verb], q) for q in (0.5, 0.99))
        lines.append(
            f"{verb:<8} {len(values):>7,} {p50:>8.1f} {p99:>8.1f}   ({q50:,.0f}, {q99:,.0f})"
        )
    lines.append(
        f"orders: {t.outcomes['orders']:,} by {len(t.bought):,} customers; "
        f"holds refused: {refused or 'none'}"
    )
    return [*lines, *notice(t, sale.poll_ms)]


def notice(t: Tally, poll_ms: int) -> list[str]:
    """How long after the last unit went every buyer left without one knew it; counted
    from the answer to the last hold that took units (the unit went before it)."""
    if not t.held_at or not t.knew:
        return ["sold-out notice: nobody was told sold out"]
    went = max(t.held_at)
    slowest: dict[str, float] = {}
    for at, how in t.knew:
        slowest[how] = max(slowest.get(how, -math.inf), at - went)
    counts = Counter(how for _, how in t.knew)
    told = ", ".join(
        f"{counts[how]:,} at a {how} (at most {1000 * s:+,.0f} ms)" for how, s in slowest.items()
    )
    stale = sum(1 for sent in t.waiting_at if sent > went)
    return [
        f"sold-out notice: the last unit went, and {1000 * max(slowest.values()):,.0f} ms later "
        f"all {len(t.knew):,} buyers without one knew: {told}",
        f"poll interval {poll_ms:,} ms: "
        + (
            "every waiting ticket was told sold out at its first poll after the last unit went"
            if not stale
            else f"{stale:,} polls sent after the last unit went were told waiting; those "
            "tickets knew one poll interval later"
        ),
    ]


# -- running it ----------------------------------------------------------------------------


async def rehearse(url: str, key: str, args: argparse.Namespace) -> tuple[list[str], Verdict]:
    run_id = uuid.uuid4().hex[:8]
    poll_ms = args.poll_ms or max(500, args.buyers // 5)
    sale = Sale(
        f"flash-{run_id}", f"FLASH-{run_id}", args.units, args.limit, args.rate, args.max_active,
        poll_ms, args.token_ttl_ms,
    )  # fmt: skip
    http = Http(url, key, args.connections)
    try:
        await define(http, sale)
        buyers, stop = Buyers(http, sale), asyncio.Event()
        monitor = asyncio.create_task(buyers.monitor(stop))
        rng = random.Random(args.seed)
        started = time.perf_counter()
        await asyncio.gather(
            *(buyers.buyer(n, random.Random(rng.random())) for n in range(args.buyers))
        )
        seconds = time.perf_counter() - started
        stop.set()
        await monitor
        verdict = await verify(http, sale)
    finally:
        http.close()
    t = buyers.tally
    verdict.errors += [f"{n:,} x {problem}" for problem, n in sorted(t.errors.items())]
    if verdict.per_customer != +t.bought:
        verdict.errors.append("the ledger's units per customer differ from what buyers bought")
    head = f"sale {sale.name}: {sale.units:,} x {sale.sku} on {CHANNEL}, limit {sale.limit}"
    most = max(verdict.per_customer.values(), default=0)
    return [
        f"{head} per customer; {args.connections} connections",
        *summary(t, sale, args.buyers, seconds),
        f"server: on_hand {verdict.on_hand:,} committed {verdict.committed:,} held "
        f"{verdict.held:,}; ledger: {verdict.ledger_sold:,} units in sale moves to "
        f"{len(verdict.per_customer):,} customers, at most {most} each",
    ], verdict


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[str, str, Path | None]]:
    """(url, operator key, data dir): --url, or a serve of our own in a temporary dir."""
    if args.url:
        if not args.key:
            raise SystemExit("flash-sale: --url needs --key, an operator key")
        yield args.url, args.key, None
        return
    from api.bench_http import running_serve  # starts and stops serve as bench http does

    with (
        tempfile.TemporaryDirectory(prefix="stockguard-flash-sale-") as tmp,
        running_serve(Path(tmp), 1, "everysec") as (url, _port, key),
    ):
        yield url, key, Path(tmp)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    audit_code = 0
    with server(args) as (url, key, data_dir):
        where = f"its own serve, data in {data_dir}" if data_dir else "a running serve"
        print(f"flash-sale: stockguard at {url} ({where})", flush=True)
        lines, verdict = run(rehearse(url, key, args))
        print("\n".join(lines), flush=True)
        if data_dir is None:
            print("audit: run `stockguard audit` with this server's Redis and ledger")
        else:  # before serve stops: the audit needs its Valkey
            audit_code, report = audit(data_dir)
            print("\n".join(("audit:", *(f"  {line}" for line in report.splitlines()))))
    for error in verdict.errors:
        print(f"error: {error}")
    oversold, violations = verdict.oversold(args.units), verdict.violations(args.limit)
    sold = verdict.committed
    print(f"flash-sale oversold: {oversold} limit-violations: {violations} sold: {sold}")
    wrong = oversold or violations or sold != args.units or verdict.held
    return 1 if wrong or verdict.errors or audit_code else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running stockguard serve (default: start one)")
    p.add_argument("--key", help="an operator API key of --url")
    p.add_argument("--buyers", type=int, default=10_000)
    p.add_argument("--units", type=int, default=500)
    p.add_argument("--limit", type=int, default=2, help="units per customer")
    p.add_argument("--rate", type=float, default=200.0, help="the sale's rate_per_s")
    p.add_argument("--max-active", type=int, default=200, help="the sale's max_active")
    p.add_argument(
        "--poll-ms",
        type=int,
        help="the sale's poll_ms (default: buyers / 5, at least 500; every 2 s for 10,000 "
        "buyers is about what one serve worker answers alongside them on 2 cores)",
    )
    p.add_argument("--token-ttl-ms", type=int, default=30_000, help="the sale's token_ttl_ms")
    p.add_argument("--connections", type=int, default=64, help="requests in flight at most")
    p.add_argument("--seed", type=int, help="of the buyers' choices")
    return p


if __name__ == "__main__":
    sys.exit(main())
