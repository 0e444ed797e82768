"""Audit: after a load test, or at any time, check every invariant over Redis and the ledger.

1. Wait (up to wait_s) for the writer to persist the outbox, so that the ledger can be
   compared; entries it dead-lettered never reach the ledger and are reported too.
2. Compare on_hand and committed with the ledger (`reconcile`).
3. Settle expired holds with `Engine.sweep()`, as the sweeper does in production, so that
   `held` counts only live holds (unless sweep=False). Its `expired` events go to the
   outbox after step 1: a second audit right after needs a writer to have written them.
4. Read each partition's stock, holds and expiry in one MULTI/EXEC (one slot: a cluster
   runs it too, and each partition is a consistent snapshot), and check no oversell,
   held counters against held records, flash-sale limits, and holds left in limbo.
5. Report channel deliveries (webhooks, fetched orders) that were dead-lettered: a sale on
   a platform that never reached the stock.

The parts of a multi-part hold live in several partitions, read one after the other; they
may disagree only within CONFIRM_GRACE_MS of their expiry (each part's script reads its
own clock). Released, expired and rejected count as one outcome: nothing held or sold.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from . import keys
from .channels import inbound
from .config import Settings
from .connect import open_engine
from .engine import CONFIRM_GRACE_MS, Engine
from .reconcile import reconcile
from .sales import Sale
from .store import Store
from .writer import Writer

SHOWN = 20  # violations listed per check in the text report
KEPT = 200  # violations kept per check (the count is always complete)
LEVELS = ("on_hand", "committed", "held")
COUNTED = ("held", "confirmed")  # states in which a sale hold counts toward the limit
OUTCOME = {"held": "held", "confirmed": "confirmed"}  # any other state: "ended"

TITLES = {
    "ledger_caught_up": "the writer has persisted the outbox",
    "no_oversell": "on_hand, committed, held >= 0 and committed + held <= on_hand",
    "held_counters": "held and channel_held equal the held hold records",
    "ledger_matches": "on_hand and committed equal the ledger's moves (reconcile)",
    "sale_limits": "flash-sale limit counters within the limit and equal to their holds",
    "holds_settled": "no hold in limbo (expiry entries, parts agree, none past expiry)",
    "deliveries_applied": "no channel delivery dead-lettered (its sale never reached stock)",
}


class Check(msgspec.Struct):
    name: str
    title: str
    count: int = 0
    violations: list[str] = []

    def add(self, violation: str) -> None:
        self.count += 1
        if len(self.violations) < KEPT:
            self.violations.append(violation)


class Report(msgspec.Struct):
    ok: bool
    swept: int | None  # expired holds the audit settled first; None: it did not sweep
    checks: list[Check]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


class Part(msgspec.Struct):
    """One partition's record of a hold (lua/lib.lua), as far as the audit reads it."""

    ch: str
    st: str
    exp: int
    parts: str
    lines: list[tuple[str, str, int]] | dict[str, int] = []  # cjson writes [] as {}
    sale: str | None = None
    ck: str | None = None
    lim: int | None = None

    def units(self) -> list[tuple[str, str, int]]:
        return self.lines if isinstance(self.lines, list) else []


@dataclass
class State:
    """Every partition's stock counters, hold records and expiry entries."""

    counters: dict[tuple[str, str, str], int] = field(default_factory=dict)
    holds: list[dict[str, Part]] = field(default_factory=list)
    expiry: list[dict[str, int]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


async def audit(
    engine: Engine, store: Store, *, wait_s: float = 30.0, sweep: bool = True
) -> Report:
    """Checks every invariant; the report lists the violations of each check."""
    client = engine.client
    checks = {name: Check(name, title) for name, title in TITLES.items()}
    await _wait_for_writer(client, store, wait_s, checks["ledger_caught_up"])
    for d in await reconcile(client, store):
        checks["ledger_matches"].add(
            f"{d.sku}@{d.location}: {d.field} {d.redis} in Redis, {d.ledger} in the ledger"
        )
    swept, swept_at = None, None
    if sweep:
        swept_at = await _now_ms(client)
        swept = await _sweep(engine, checks["holds_settled"])
    state = await _snapshot(client)
    now = await _now_ms(client)
    sales = await _sales(client, checks["sale_limits"])
    _check_levels(state, checks["no_oversell"])
    _check_held(state, checks["held_counters"])
    retention = engine.settings.finished_retention_ms
    _check_limits(state, sales, now - retention, checks["sale_limits"])
    _check_limbo(state, now, swept_at, checks["holds_settled"])
    if dead := await inbound.dead_letters(client):
        checks["deliveries_applied"].add(
            f"{dead} channel deliveries dead-lettered, not applied to stock: "
            f"XRANGE {inbound.DEAD} - + shows each with its error"
        )
    return Report(not any(c.count for c in checks.values()), swept, list(checks.values()))


async def _now_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _sweep(engine: Engine, check: Check) -> int:
    swept = 0
    try:
        for _ in range(1000):  # each call settles up to 1000 holds per partition
            settled = await engine.sweep()
            swept += settled
            if not settled:
                break
    except ResponseError as error:  # a script error: the state is broken, not the audit
        check.add(f"the sweep failed: {error}")
    return swept


async def _wait_for_writer(client: Any, store: Store, wait_s: float, check: Check) -> None:
    writer = Writer(client, store)
    await writer.setup()  # the writer's consumer groups, as it makes them itself
    deadline = asyncio.get_running_loop().time() + wait_s
    while (lag := await writer.lag()).pending and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    if lag.pending:
        check.add(
            f"ledger behind by {lag.pending} entries (oldest {lag.oldest_age_ms} ms) "
            f"after waiting {wait_s:g} s: is a writer running?"
        )
    for p in range(keys.PARTITIONS):
        if dead := await client.xlen(keys.dead_letters(p)):
            check.add(f"partition {p}: {dead} outbox entries dead-lettered, not in the ledger")


async def _snapshot(client: Any) -> State:
    state = State()
    for p in range(keys.PARTITIONS):
        names = dict(zip(keys.PARTITION_KEYS, keys.partition_keys(p), strict=True))
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(names["stock"])
        pipe.hgetall(names["holds"])
        pipe.zrange(names["expiry"], 0, -1, withscores=True)
        stock, holds, expiry = await pipe.execute()
        for name, value in stock.items():
            sku, place, kind = name.split(":", 2)  # names never contain ':'
            state.counters[sku, place, kind] = int(value)
        records = {}
        for hold_id, raw in holds.items():
            try:
                records[hold_id] = msgspec.json.decode(raw, type=Part)
            except msgspec.DecodeError as error:  # a ValidationError is a DecodeError
                state.unreadable.append(f"hold {hold_id} (partition {p}): unreadable: {error}")
        state.holds.append(records)
        state.expiry.append({member: int(score) for member, score in expiry})
    return state


async def _sales(client: Any, check: Check) -> dict[str, Sale]:
    sales = {}
    for name, raw in (await client.hgetall(keys.SALES)).items():
        try:
            sales[name] = msgspec.json.decode(raw, type=Sale)
        except msgspec.DecodeError as error:
            check.add(f"sale {name}: unreadable definition: {error}")
    return sales


def _check_levels(state: State, check: Check) -> None:
    levels: dict[tuple[str, str], dict[str, int]] = {}
    for (sku, place, kind), value in state.counters.items():
        if kind in LEVELS:
            levels.setdefault((sku, place), {})[kind] = value
    for (sku, location), fields in sorted(levels.items()):
        on_hand, committed, held = (fields.get(kind, 0) for kind in LEVELS)
        if min(on_hand, committed, held) < 0:
            check.add(
                f"{sku}@{location}: negative: on_hand {on_hand}, committed {committed}, held {held}"
            )
        elif committed + held > on_hand:
            check.add(f"{sku}@{location}: committed {committed} + held {held} > on_hand {on_hand}")


def _check_held(state: State, check: Check) -> None:
    live: dict[str, Counter[tuple[str, str]]] = {"held": Counter(), "channel_held": Counter()}
    for records in state.holds:
        for part in records.values():
            if part.st == "held":
                for sku, location, qty in part.units():
                    live["held"][sku, location] += qty
                    live["channel_held"][sku, part.ch] += qty
    for kind, in_holds in live.items():
        counted = {(s, place): n for (s, place, k), n in state.counters.items() if k == kind}
        for sku, place in sorted(counted.keys() | in_holds.keys()):
            n, expected = counted.get((sku, place), 0), in_holds[sku, place]
            if n != expected:
                check.add(f"{sku}@{place}: {kind} {n}, but held records hold {expected}")


def _check_limits(
    state: State, sales: dict[str, Sale], forgotten_before: int, check: Check
) -> None:
    """Counters `<sku>:<sale>:limit.<ck>` against the sale's limit and the sale's holds.

    Finished records are forgotten after the retention, so a counter may exceed its
    records only for a sale that started before the oldest finish still kept.
    """
    used: Counter[tuple[str, str, str]] = Counter()
    limits: dict[str, int] = {}
    for records in state.holds:
        for part in records.values():
            if part.sale is not None and part.ck is not None and part.st in COUNTED:
                limits[part.sale] = max(limits.get(part.sale, 0), part.lim or 0)
                for sku, _, qty in part.units():
                    used[sku, part.sale, part.ck] += qty
    counters = {
        (sku, sale, kind.removeprefix("limit.")): n
        for (sku, sale, kind), n in state.counters.items()
        if kind.startswith("limit.")
    }
    for sku, name, ck in sorted(counters.keys() | used.keys()):
        n, held = counters.get((sku, name, ck), 0), used[sku, name, ck]
        sale = sales.get(name)
        limit = sale.limit if sale is not None else limits.get(name)
        who = f"{sku} in sale {name}, customer {ck}"
        if limit is not None and n > limit:
            check.add(f"{who}: {n} units > limit {limit}")
        exact = sale is not None and sale.start_ms > forgotten_before
        if n < held or (exact and n != held):
            check.add(f"{who}: counter {n}, but held and confirmed holds have {held}")


def _check_limbo(state: State, now: int, swept_at: int | None, check: Check) -> None:
    for violation in state.unreadable:
        check.add(violation)
    for p, (records, expiry) in enumerate(zip(state.holds, state.expiry, strict=True)):
        for hold_id, part in sorted(records.items()):
            if part.st != "held":
                continue
            at = expiry.get(hold_id)
            where = f"hold {hold_id} (partition {p})"
            if at is None:
                check.add(f"{where}: held, but no expiry entry")
            elif at != part.exp:
                check.add(f"{where}: expires at {part.exp}, but its expiry entry says {at}")
            if swept_at is not None and part.exp <= swept_at:
                check.add(f"{where}: held {now - part.exp} ms past its expiry after the sweep")
        for hold_id in sorted(expiry):
            found = records.get(hold_id)
            if found is None or found.st != "held":
                what = f"the record is {found.st}" if found else "there is no record"
                check.add(f"hold {hold_id} (partition {p}): expiry entry, but {what}")
    _check_parts(state, now, check)


def _check_parts(state: State, now: int, check: Check) -> None:
    """The parts of a multi-part hold share one fate."""
    by_id: dict[str, dict[int, Part]] = {}
    for p, records in enumerate(state.holds):
        for hold_id, part in records.items():
            if "," in part.parts:
                by_id.setdefault(hold_id, {})[p] = part
    for hold_id, found in sorted(by_id.items()):
        listed = sorted({int(p) for part in found.values() for p in part.parts.split(",")})
        states = {p: found[p].st if p in found else "missing" for p in listed}
        outcomes = {OUTCOME.get(s, "ended") if s != "missing" else s for s in states.values()}
        if len(outcomes) == 1 or ("missing" in outcomes and "held" not in outcomes):
            continue  # agreed, or finished parts forgotten by the retention a sweep apart
        exps = [part.exp for part in found.values()]
        if min(exps) - CONFIRM_GRACE_MS <= now <= max(exps) + CONFIRM_GRACE_MS:
            continue  # settling around its expiry (each part's script has its own clock read)
        detail = ", ".join(f"partition {p} {s}" for p, s in states.items())
        check.add(f"hold {hold_id}: parts disagree: {detail}")


def format_text(report: Report) -> str:
    """The report for a terminal: each check with ok or its violations (the first SHOWN)."""
    if report.swept is None:
        lines = ["sweep: skipped; holds past their expiry still count in held until settled"]
    else:
        lines = [f"sweep: settled {report.swept} expired hold(s) first, as the sweeper does"]
    for c in report.checks:
        lines.append(f"{'ok' if not c.count else f'FAIL ({c.count})':<10} {c.title}")
        lines.extend(f"    {violation}" for violation in c.violations[:SHOWN])
        if c.count > SHOWN:
            lines.append(f"    ... and {c.count - SHOWN} more")
    failed = [c for c in report.checks if c.count]
    total = sum(c.count for c in failed)
    verdict = "audit: ok" if report.ok else f"audit: {total} violation(s) in {len(failed)} check(s)"
    return "\n".join([*lines, verdict])


def to_json(report: Report) -> bytes:
    return msgspec.json.encode(report)


async def run(settings: Settings, *, wait_s: float, as_json: bool, sweep: bool) -> int:
    """The `stockguard audit` command: prints the report; 0 if every check passed, else 1."""
    store = Store.from_url(settings.ledger_url)
    await store.open()
    try:
        async with open_engine(settings) as engine:
            report = await audit(engine, store, wait_s=wait_s, sweep=sweep)
    finally:
        await store.close()
    print(to_json(report).decode() if as_json else format_text(report))
    return 0 if report.ok else 1
