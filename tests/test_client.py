"""api.client through the real app (ASGI), on the real Redis and a SQLite ledger.

The transport wrapper `Wire` interferes with the wire only (a lost response, a proxy's
503, a refused connection); the server behind it is always the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from helpers import Api, outbox_events

from api import client as sg
from api.client import Client
from api.idempotency import fingerprint
from api.schemas import Ats, MovePage
from engine import HoldState, Policy, PolicyKind
from engine.models import Catalog, Hold, HoldLine, LocationStock, SkuSettings, StockLevel
from engine.writer import Writer

BASE_URL = "http://stockguard.test"
Before = Callable[[int, httpx.Request], Awaitable[httpx.Response | None]]


class Wire(httpx.AsyncBaseTransport):
    """Forwards each request to the app and logs the exchange. `before(n, request)` may
    answer (or raise) in the app's place; the first `lose` answers the app gave are lost
    on the way back, after the app processed the request."""

    def __init__(self, app: Any, before: Before | None = None, lose: int = 0) -> None:
        self.app, self.before, self.lose = httpx.ASGITransport(app=app), before, lose
        self.attempts = 0
        self.log: list[tuple[str | None, int, bool]] = []  # key, status, replayed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        answer = await self.before(self.attempts - 1, request) if self.before else None
        if answer is None:
            answer = await self.app.handle_async_request(request)
            await answer.aread()
        replayed = answer.headers.get("idempotent-replayed") == "true"
        self.log.append((request.headers.get("idempotency-key"), answer.status_code, replayed))
        if self.lose > 0:
            self.lose -= 1
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return httpx.Response(
            answer.status_code, headers=answer.headers, content=answer.content, request=request
        )


def connect(api: Api, role: str, transport: httpx.AsyncBaseTransport | None = None) -> Client:
    wire = transport or httpx.ASGITransport(app=api.app)
    return Client(BASE_URL, api.keys[role], transport=wire, backoff_s=0.01)


async def held(api: Api, sku: str) -> int:
    return sum(row.held for row in (await api.engine.stock(sku)).locations)


def at(level: StockLevel, location: str) -> LocationStock:
    return next(row for row in level.locations if row.location == location)


async def holds_of(api: Api) -> set[str]:
    """The ids of every hold ever placed, from the outbox."""
    events = await outbox_events(api.engine.client)
    return {e["hold"]["id"] for e in events if e["type"] == "hold" and e["event"] == "placed"}


# -- every method, typed ------------------------------------------------------------------


async def test_hold_lifecycle_returns_typed_values(api_shop: Api) -> None:
    async with connect(api_shop, "operator") as ops, connect(api_shop, "checkout") as c:
        level = await ops.receive("A", "wh1", 5, reference="po-1")
        assert level == LocationStock("wh1", on_hand=5, committed=0, held=0, available=5)
        await ops.receive("B", "wh2", 1)
        hold = await c.hold("web", {"A": 2}, ttl_ms=60_000, customer="cust-1")
        assert isinstance(hold, Hold) and hold.state is HoldState.HELD
        assert hold.lines == (HoldLine("A", "wh1", 2),) and hold.customer == "cust-1"
        assert await c.get_hold(hold.id) == hold
        extended = await c.extend(hold.id, 600_000)
        assert extended.expires_at_ms > hold.expires_at_ms
        confirmed = await c.confirm(hold.id, reference="order-1")
        assert (confirmed.state, confirmed.reference) == (HoldState.CONFIRMED, "order-1")
        basket = await c.hold("web", [("A", 3), ("B", 1)], ttl_ms=60_000)
        assert set(basket.lines) == {HoldLine("A", "wh1", 3), HoldLine("B", "wh2", 1)}
        released = await c.release(basket.id)
        assert released.state is HoldState.RELEASED and released.id == basket.id
        stock = await c.stock("A", ["web"])
        assert isinstance(stock, StockLevel) and stock.ats == {"web": 3}
        assert at(stock, "wh1") == LocationStock("wh1", on_hand=5, committed=2, held=0, available=3)
        assert await c.ats("web", ["A", "B", "no-such-sku"]) == Ats("web", {"A": 3, "B": 1})


async def test_operator_calls_and_paged_moves(api: Api) -> None:
    async with connect(api, "operator") as ops:
        await ops.define_location("wh1")
        catalog = await ops.define_location("wh2")
        assert isinstance(catalog, Catalog) and set(catalog.locations) == {"wh1", "wh2"}
        catalog = await ops.define_channel("web", ["wh1", "wh2"], Policy(PolicyKind.CAP, 50))
        assert catalog.channels["web"].locations == ("wh1", "wh2")
        policy = catalog.channels["web"].policy
        assert (policy.kind, policy.qty, policy.buffer) == (PolicyKind.CAP, 50, 0)
        assert policy.since_ms > 0
        assert await ops.catalog() == catalog
        assert await ops.define_sku("A", buffer=1) == SkuSettings(buffer=1)
        assert await ops.define_sku("A") == SkuSettings()
        assert (await ops.receive("A", "wh1", 10)).on_hand == 10
        assert (await ops.adjust("A", "wh1", -1, "dropped")).on_hand == 9
        assert (await ops.count("A", "wh1", 8)).on_hand == 8
        await ops.confirm((await ops.hold("web", {"A": 3}, ttl_ms=60_000)).id)
        assert await ops.ship("A", "wh1", 2, reference="parcel-1") == LocationStock(
            "wh1", on_hand=6, committed=1, held=0, available=5
        )
        assert (await ops.cancel("A", "wh1", 1)).committed == 0
        assert (await ops.return_units("A", "wh1", 1)).on_hand == 7
        damaged = await ops.return_units("A", "wh1", 1, damaged=True, reason="torn")
        assert damaged.on_hand == 7
        assert await ops.transfer("A", "wh1", "wh2", 2) == LocationStock("wh2", 2, 0, 0, 2)
        writer = Writer(api.engine.client, api.app.state.store)
        await writer.setup()
        await writer.drain()
        first = await ops.moves(sku="A", limit=3)
        assert isinstance(first, MovePage) and len(first.moves) == 3 and first.next
        kinds = [move.kind async for move in ops.iter_moves(sku="A")]
        assert kinds[:3] == [move.kind for move in first.moves]
        assert kinds[:3] == ["receive", "adjust", "count"] and "transfer" in kinds[-2:]
        assert len(kinds) == len({m.id async for m in ops.iter_moves()}) >= 9
        on_wh2 = await ops.moves(location="wh2", limit=1000)
        assert [(m.kind, m.on_hand_delta) for m in on_wh2.moves] == [("transfer", 2)]
        assert on_wh2.next is None


# -- problems become typed exceptions -----------------------------------------------------


async def test_refusals_raise_typed_errors_with_their_data(api_shop: Api) -> None:
    async with connect(api_shop, "operator") as ops, connect(api_shop, "checkout") as c:
        await ops.receive("A", "wh1", 2)
        with pytest.raises(sg.InsufficientStockError) as short:
            await c.hold("web", {"A": 5}, ttl_ms=60_000)
        e = short.value
        assert (e.status, e.kind, e.sku, e.requested, e.available) == (
            409,
            "insufficient-stock",
            "A",
            5,
            2,
        )
        assert e.data == {"sku": "A", "requested": 5, "available": 2}
        with pytest.raises(sg.HoldNotFoundError) as missing:
            await c.get_hold("no-such-hold")
        assert (missing.value.status, missing.value.hold_id) == (404, "no-such-hold")
        gone = await c.release((await c.hold("web", {"A": 1}, ttl_ms=60_000)).id)
        with pytest.raises(sg.HoldNotActiveError) as inactive:
            await c.confirm(gone.id)
        assert (inactive.value.hold_id, inactive.value.state) == (gone.id, "released")
        with pytest.raises(sg.UnknownSkuError) as unknown:
            await c.stock("NOPE")
        assert unknown.value.sku == "NOPE" and unknown.value.status == 404
        with pytest.raises(sg.ValidationError) as invalid:
            await c.hold("web", {"A": 0}, ttl_ms=60_000)
        assert invalid.value.status == 422 and invalid.value.field == "$.lines[0].qty"
        with pytest.raises(sg.ForbiddenError) as forbidden:
            await c.receive("A", "wh1", 1)
        assert forbidden.value.allowed == ["operator"]
        assert await held(api_shop, "A") == 0
        assert at(await ops.stock("A"), "wh1").on_hand == 2


async def test_shortfall_and_auth_errors(api_shop: Api) -> None:
    async with connect(api_shop, "operator") as ops, connect(api_shop, "checkout") as c:
        await ops.receive("A", "wh1", 2)
        lapsed = await c.hold("web", {"A": 2}, ttl_ms=1)
        await asyncio.sleep(0.02)
        await c.hold("amazon", {"A": 2}, ttl_ms=60_000)  # the units went to another buyer
        with pytest.raises(sg.ShortfallError) as shortfall:
            await c.confirm(lapsed.id)
        assert (shortfall.value.hold_id, shortfall.value.missing) == (lapsed.id, {"A": 2})
    stranger = Client(BASE_URL, "sg_nobody_secret", transport=httpx.ASGITransport(app=api_shop.app))
    async with stranger:
        with pytest.raises(sg.UnauthorizedError) as unauthorized:
            await stranger.stock("A")
    assert unauthorized.value.status == 401 and unauthorized.value.kind == "unauthorized"
    async with connect(api_shop, "read-only") as reader:
        with pytest.raises(sg.ForbiddenError) as forbidden:
            await reader.hold("web", {"A": 1}, ttl_ms=1000)
        assert forbidden.value.status == 403
        assert sorted(forbidden.value.allowed) == ["checkout", "operator"]


# -- idempotency and retries --------------------------------------------------------------


async def test_an_explicit_key_replayed_gives_the_same_hold_once(api_shop: Api) -> None:
    await api_shop.engine.receive("A", "wh1", 5)
    wire = Wire(api_shop.app)
    async with connect(api_shop, "checkout", wire) as c:
        first = await c.hold("web", {"A": 2}, ttl_ms=60_000, idempotency_key="cart-42")
        again = await c.hold("web", {"A": 2}, ttl_ms=60_000, idempotency_key="cart-42")
        assert again == first
        assert wire.log == [("cart-42", 201, False), ("cart-42", 201, True)]
        assert await held(api_shop, "A") == 2 and await holds_of(api_shop) == {first.id}
        with pytest.raises(sg.IdempotencyConflictError) as conflict:
            await c.hold("web", {"A": 3}, ttl_ms=60_000, idempotency_key="cart-42")
        assert conflict.value.status == 409
        by_id = [await c.hold("web", {"A": 1}, ttl_ms=60_000, hold_id="h-7") for _ in "ab"]
        assert by_id[0] == by_id[1] and by_id[0].id == "h-7"
        assert wire.log[-2][0] != wire.log[-1][0]  # two fresh keys; the hold id replayed
        assert await held(api_shop, "A") == 3


async def test_a_lost_response_is_retried_with_the_same_key(api_shop: Api) -> None:
    await api_shop.engine.receive("A", "wh1", 5)
    wire = Wire(api_shop.app, lose=1)
    async with connect(api_shop, "checkout", wire) as c:
        hold = await c.hold("web", {"A": 2}, ttl_ms=60_000)
        (key, status, replayed), retry = wire.log
        assert (status, replayed) == (201, False)  # the server placed it; the answer was lost
        assert retry == (key, 201, True) and key is not None
        assert await held(api_shop, "A") == 2 and await holds_of(api_shop) == {hold.id}
        wire.lose = 1
        assert await c.get_hold(hold.id) == hold  # reads are retried too
        wire.lose = 1
        confirmed = await c.confirm(hold.id, reference="o-1")
        assert confirmed.state is HoldState.CONFIRMED and wire.log[-1][1:] == (200, True)
    assert at(await api_shop.engine.stock("A"), "wh1").committed == 2


async def test_gateway_errors_and_refused_connections_are_retried(api_shop: Api) -> None:
    await api_shop.engine.receive("A", "wh1", 5)

    async def flaky(n: int, request: httpx.Request) -> httpx.Response | None:
        if n == 0:
            return httpx.Response(502, text="<html>Bad Gateway</html>")
        if n == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return None

    wire = Wire(api_shop.app, before=flaky)
    async with connect(api_shop, "checkout", wire) as c:
        hold = await c.hold("web", {"A": 1}, ttl_ms=60_000)
    assert wire.attempts == 3 and [status for _, status, _ in wire.log] == [502, 201]
    assert wire.log[0][0] == wire.log[1][0]
    assert await holds_of(api_shop) == {hold.id}


async def test_retries_stop_after_the_limit_and_never_on_other_4xx(api_shop: Api) -> None:
    async def down(n: int, request: httpx.Request) -> httpx.Response:
        problem = {"type": "x/unavailable", "title": "t", "status": 503, "detail": "redis away"}
        return httpx.Response(503, json=problem, headers={"Retry-After": "0"})

    wire = Wire(api_shop.app, before=down)
    async with connect(api_shop, "checkout", wire) as c:
        with pytest.raises(sg.UnavailableError) as unavailable:
            await c.hold("web", {"A": 1}, ttl_ms=60_000)
    assert unavailable.value.detail == "redis away" and wire.attempts == 4

    async def refused(n: int, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    wire = Wire(api_shop.app, before=refused)
    async with connect(api_shop, "checkout", wire) as c:
        with pytest.raises(httpx.ConnectError):
            await c.release("h-1")
    assert wire.attempts == 4
    wire = Wire(api_shop.app)
    async with connect(api_shop, "checkout", wire) as c:
        with pytest.raises(sg.InsufficientStockError):
            await c.hold("web", {"A": 1}, ttl_ms=60_000)
        with pytest.raises(sg.HoldNotFoundError):
            await c.release("h-1")
    assert [status for _, status, _ in wire.log] == [409, 404]


async def test_in_progress_is_retried_after_retry_after(api_shop: Api) -> None:
    """A request whose key another attempt still runs under waits Retry-After, then replays."""
    await api_shop.engine.receive("A", "wh1", 5)
    idempotency, sent = api_shop.app.state.idempotency, []

    async def first_attempt_elsewhere(n: int, request: httpx.Request) -> None:
        sent.append(time.monotonic())
        # The server scopes a key to the API key that sends it: "<key id>/<key>".
        key_id = api_shop.keys["checkout"].split("_")[1]
        key = f"{key_id}/{request.headers['idempotency-key']}"
        if n == 0:  # an earlier attempt with this key is running on another worker
            await idempotency.begin(key, fingerprint("POST", request.url.path, request.content))
        else:  # ... and that worker died: its pending record is gone
            await idempotency.abandon(key)

    wire = Wire(api_shop.app, before=first_attempt_elsewhere)
    async with connect(api_shop, "checkout", wire) as c:
        hold = await c.hold("web", {"A": 1}, ttl_ms=60_000, idempotency_key="k-busy")
    assert [status for _, status, _ in wire.log] == [409, 201]
    assert sent[1] - sent[0] >= 0.9  # the server's Retry-After: 1
    assert await holds_of(api_shop) == {hold.id}
    wire = Wire(api_shop.app, before=first_attempt_elsewhere)
    impatient = Client(BASE_URL, api_shop.keys["checkout"], retries=0, transport=wire)
    async with impatient:
        with pytest.raises(sg.IdempotencyInProgressError) as busy:
            await impatient.hold("web", {"A": 1}, ttl_ms=60_000, idempotency_key="k-busy-2")
    assert busy.value.status == 409 and busy.value.kind == "idempotency-in-progress"
