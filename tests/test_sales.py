"""Flash sales: the admission queue (FIFO at a rate, fairness, draws, drops, sold out),
admission tokens, and the per-customer limit enforced inside the hold scripts."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import msgspec
import pytest

from engine import Engine
from engine.errors import (
    AdmissionExpiredError,
    AdmissionInvalidError,
    AdmissionRequiredError,
    AdmissionUsedError,
    InsufficientStockError,
    LimitExceededError,
    SaleEndedError,
    TicketNotFoundError,
    UnknownSaleError,
)
from engine.sales import Sale, Sales, Ticket, TicketState


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def sales(engine: Engine) -> Sales:
    await engine.define_location("wh")
    await engine.define_channel("web", ["wh"])
    for sku in ("X", "Y"):
        await engine.define_sku(sku)
        await engine.receive(sku, "wh", 100)
    return Sales(engine)


def sale(**overrides: Any) -> Sale:
    start = now_ms() - 1000
    fields: dict[str, Any] = {
        "name": "drop",
        "channel": "web",
        "skus": ("X",),
        "start_ms": start,
        "end_ms": start + 600_000,
        "rate_per_s": 1000.0,
        "max_active": 1000,
        "token_ttl_ms": 60_000,
        "limit": 2,
    }
    return Sale(**{**fields, **overrides})


async def admitted(sales: Sales, customer: str, ticket: Ticket) -> Ticket:
    """Polls until the ticket is no longer waiting."""
    for _ in range(400):
        ticket = await sales.poll(ticket.sale, ticket.ticket, customer)
        if ticket.state is not TicketState.WAITING:
            return ticket
        await asyncio.sleep(0.01)
    raise AssertionError(f"{customer} still waits")


async def test_joins_are_admitted_in_order_at_the_rate(sales: Sales) -> None:
    start = now_ms()  # no burst saved up: the first admission is 50 ms away
    await sales.define(sale(rate_per_s=20.0, start_ms=start, end_ms=start + 60_000))
    tickets = [await sales.join("drop", f"c{i}") for i in range(10)]
    assert [t.place for t in tickets] == list(range(1, 11))
    started = time.monotonic()
    results = [await admitted(sales, f"c{i}", t) for i, t in enumerate(tickets)]
    elapsed = time.monotonic() - started
    expiries = [r.token_expires_at_ms for r in results]
    assert all(r.state is TicketState.ADMITTED for r in results)
    assert expiries == sorted(expiries)  # admitted in join order
    assert elapsed >= 0.3  # 10 at 20/s, with a one-second burst of 20: never faster than rate


async def test_a_client_polling_100x_faster_gains_no_place(sales: Sales) -> None:
    start = now_ms()
    await sales.define(sale(rate_per_s=10.0, start_ms=start, end_ms=start + 60_000))
    slow = [await sales.join("drop", f"slow{i}") for i in range(8)]
    fast = await sales.join("drop", "fast")
    order: list[str] = []

    async def poller(customer: str, ticket: Ticket, every_s: float) -> None:
        while True:
            ticket = await sales.poll("drop", ticket.ticket, customer)
            if ticket.state is TicketState.ADMITTED:
                order.append(customer)
                return
            await asyncio.sleep(every_s)

    await asyncio.gather(
        *(poller(f"slow{i}", t, 0.1) for i, t in enumerate(slow)), poller("fast", fast, 0.001)
    )
    # Every slow poller joined before the fast one, and each is admitted before it: an
    # admission goes to the head of the line, whoever's call runs it.
    expiry = {}
    for i, t in enumerate(slow):
        expiry[f"slow{i}"] = (await sales.poll("drop", t.ticket, f"slow{i}")).token_expires_at_ms
    fast_expiry = (await sales.poll("drop", fast.ticket, "fast")).token_expires_at_ms
    assert fast_expiry is not None
    assert all(e is not None and e <= fast_expiry for e in expiry.values())


async def test_joins_before_the_start_are_drawn_at_random_at_the_start(sales: Sales) -> None:
    start = now_ms() + 400
    await sales.define(sale(start_ms=start, end_ms=start + 60_000, rate_per_s=0.5))
    early = [await sales.join("drop", f"e{i}") for i in range(30)]
    assert {t.place for t in early} == {None}  # places are drawn at the start
    await asyncio.sleep(max(0, start - now_ms()) / 1000 + 0.05)
    late = await sales.join("drop", "late")
    places = [(await sales.poll("drop", t.ticket, f"e{i}")).place for i, t in enumerate(early)]
    # The early joiners are all ahead of the late one, in an order drawn at random (the
    # join order itself would come up once in 30! draws).
    assert sorted(places) == list(range(1, 31))  # type: ignore[type-var]
    assert places != list(range(1, 31))
    assert (await sales.poll("drop", late.ticket, "late")).place == 31


async def test_without_randomising_early_joins_keep_their_order(sales: Sales) -> None:
    start = now_ms() + 300
    await sales.define(sale(start_ms=start, end_ms=start + 60_000, randomize=False))
    early = [await sales.join("drop", f"e{i}") for i in range(5)]
    assert [t.place for t in early] == [1, 2, 3, 4, 5]


async def test_tickets_that_stop_polling_are_dropped(sales: Sales) -> None:
    start = now_ms() + 300
    await sales.define(
        sale(start_ms=start, end_ms=start + 60_000, poll_ms=100, idle_ms=200, randomize=False)
    )
    quiet = await sales.join("drop", "quiet")
    active = await sales.join("drop", "active")
    for _ in range(10):  # only "active" polls, through the start
        await asyncio.sleep(0.06)
        last = await sales.poll("drop", active.ticket, "active")
    assert last.state is TicketState.ADMITTED
    assert (await sales.poll("drop", quiet.ticket, "quiet")).state is TicketState.DROPPED
    again = await sales.join("drop", "quiet")  # a dropped customer may join again, at the back
    assert again.ticket != quiet.ticket


async def test_an_admission_never_used_frees_its_slot_when_it_expires(sales: Sales) -> None:
    await sales.define(sale(max_active=1, token_ttl_ms=1000))
    first = await admitted(sales, "a", await sales.join("drop", "a"))
    assert first.state is TicketState.ADMITTED
    second = await sales.join("drop", "b")
    await asyncio.sleep(0.3)
    assert (await sales.poll("drop", second.ticket, "b")).state is TicketState.WAITING
    await asyncio.sleep(0.8)
    assert (await admitted(sales, "b", second)).state is TicketState.ADMITTED
    assert (await sales.poll("drop", first.ticket, "a")).state is TicketState.EXPIRED
    with pytest.raises(AdmissionExpiredError):
        await sales.hold(
            await sales.get("drop"), first.token, "web", [("X", 1)], ttl_ms=60_000, customer="a"
        )


async def test_spending_the_admission_frees_the_slot_for_the_next_buyer(sales: Sales) -> None:
    drop = await sales.define(sale(max_active=1))
    a = await admitted(sales, "a", await sales.join("drop", "a"))
    b = await sales.join("drop", "b")
    assert (await sales.poll("drop", b.ticket, "b")).state is TicketState.WAITING
    await sales.hold(drop, a.token, "web", [("X", 1)], ttl_ms=60_000, customer="a")
    assert (await admitted(sales, "b", b)).state is TicketState.ADMITTED


async def test_sold_out_is_told_to_joins_and_waiting_tickets(engine: Engine, sales: Sales) -> None:
    await engine.adjust("X", "wh", -98, reason="only two for the sale")
    drop = await sales.define(sale(max_active=1))
    a = await admitted(sales, "a", await sales.join("drop", "a"))
    waiting = await sales.join("drop", "w")
    assert waiting.state is TicketState.WAITING
    await sales.hold(drop, a.token, "web", [("X", 2)], ttl_ms=60_000, customer="a")
    # The hold that took the last units marked the sale at once (no wait for a re-check).
    assert (await sales.poll("drop", waiting.ticket, "w")).state is TicketState.SOLD_OUT
    assert (await sales.join("drop", "late")).state is TicketState.SOLD_OUT
    assert (await sales.stats("drop")).sold_out


async def test_tokens_are_checked(sales: Sales) -> None:
    drop = await sales.define(sale())
    a = await admitted(sales, "a", await sales.join("drop", "a"))
    assert a.token is not None
    payload, mac = a.token.split(".")
    forged_payload = base64.urlsafe_b64encode(
        msgspec.json.encode(["drop", a.ticket, "0" * 16, a.token_expires_at_ms])
    ).decode()
    for bad in ("", "x", f"{payload}.{mac[:-2]}AA", f"{forged_payload}.{mac}"):
        with pytest.raises((AdmissionInvalidError, AdmissionRequiredError)):
            await sales.hold(drop, bad, "web", [("X", 1)], ttl_ms=60_000, customer="a")
    with pytest.raises(AdmissionInvalidError):  # another customer's token
        await sales.hold(drop, a.token, "web", [("X", 1)], ttl_ms=60_000, customer="b")
    with pytest.raises(InsufficientStockError):  # refused: the admission is given back
        await sales.hold(drop, a.token, "web", [("X", 101)], ttl_ms=60_000, customer="a")
    await sales.hold(drop, a.token, "web", [("X", 1)], ttl_ms=60_000, customer="a")
    with pytest.raises(AdmissionUsedError):
        await sales.hold(drop, a.token, "web", [("X", 1)], ttl_ms=60_000, customer="a")
    with pytest.raises(TicketNotFoundError):
        await sales.poll("drop", a.ticket, "someone-else")


async def test_ended_and_unknown_sales(sales: Sales) -> None:
    start = now_ms() - 10_000
    await sales.define(sale(start_ms=start, end_ms=start + 5000))
    with pytest.raises(SaleEndedError):
        await sales.join("drop", "a")
    with pytest.raises(UnknownSaleError):
        await sales.join("nope", "a")


async def test_for_hold_finds_the_running_sale_of_a_sku(sales: Sales) -> None:
    drop = await sales.define(sale(skus=("X",)))
    assert await sales.for_hold("web", ["Y", "X"]) == drop
    assert await sales.for_hold("web", ["Y"]) is None
    assert await sales.for_hold("other", ["X"]) is None


async def test_the_limit_counts_held_and_confirmed_units(engine: Engine, sales: Sales) -> None:
    limit = ("drop", 2)
    one = await engine.hold("web", {"X": 1}, ttl_ms=60_000, customer="a", sale=limit)
    await engine.confirm(one.id)
    with pytest.raises(LimitExceededError) as refused:
        await engine.hold("web", {"X": 2}, ttl_ms=60_000, customer="a", sale=limit)
    assert (refused.value.used, refused.value.limit, refused.value.requested) == (1, 2, 2)
    two = await engine.hold("web", {"X": 1}, ttl_ms=60_000, customer="a", sale=limit)
    with pytest.raises(LimitExceededError):
        await engine.hold("web", {"X": 1}, ttl_ms=60_000, customer="a", sale=limit)
    await engine.release(two.id)  # a released hold gives its units back to the limit
    short = await engine.hold("web", {"X": 1}, ttl_ms=200, customer="a", sale=limit)
    await asyncio.sleep(0.3)  # an expired one too
    await engine.hold("web", {"X": 1}, ttl_ms=60_000, customer="a", sale=limit)
    with pytest.raises(LimitExceededError):  # a late confirm of the expired hold counts again
        await engine.extend(short.id, 60_000)
    # Other customers, other SKUs and holds outside the sale are not limited by "a".
    await engine.hold("web", {"X": 2}, ttl_ms=60_000, customer="b", sale=limit)
    await engine.hold("web", {"Y": 2}, ttl_ms=60_000, customer="a", sale=limit)
    await engine.hold("web", {"X": 5}, ttl_ms=60_000, customer="a")


async def test_concurrent_holds_never_pass_the_limit(engine: Engine, sales: Sales) -> None:
    async def attempt() -> bool:
        try:
            await engine.hold("web", {"X": 1, "Y": 1}, ttl_ms=60_000, customer="a", sale=("d", 3))
        except LimitExceededError:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(200)))
    assert sum(results) == 3
    stock = await engine.stock("X")
    assert stock.locations[0].held == 3


async def test_a_refused_hold_frees_the_slot_but_keeps_the_token(sales: Sales) -> None:
    drop = await sales.define(sale(max_active=1))
    a = await admitted(sales, "a", await sales.join("drop", "a"))
    b = await sales.join("drop", "b")
    with pytest.raises(InsufficientStockError):
        await sales.hold(drop, a.token, "web", [("X", 101)], ttl_ms=60_000, customer="a")
    assert (await admitted(sales, "b", b)).state is TicketState.ADMITTED  # a's slot is free
    await sales.hold(drop, a.token, "web", [("X", 1)], ttl_ms=60_000, customer="a")  # retry
