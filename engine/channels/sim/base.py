"""What every simulator shares: the pushed quantities and their history, rate limits
(with 429 and Retry-After), injectable faults, the storefront, webhook delivery with the
platform's retries and duplicates, and the /_sim control routes.

Control routes (JSON), the same on every simulator:
  GET  /_sim/state     quantities, history length, calls, updates, throttled, orders
  POST /_sim/limits    {"on": bool}             documented rate limits on or off
  POST /_sim/faults    Faults fields            latency, 5xx and timeout injection
  POST /_sim/orders    {"sku", "qty"}           a storefront order (409 if not enough)
  POST /_sim/reset     {}                        forget quantities, orders and counters
  GET  /_sim/history                             every quantity set: {sku: [[at_ms, qty]]}
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Listing
from ..limits import TokenBucket


class Faults(msgspec.Struct, forbid_unknown_fields=True):
    latency_ms: float = 0.0  # added to every platform call
    error_rate: float = 0.0  # share of platform calls answered 503
    timeout_rate: float = 0.0  # share of platform calls that hang for timeout_s
    timeout_s: float = 10.0


class Order(msgspec.Struct):
    order_id: str
    sku: str
    qty: int
    line_id: str
    created_ms: int
    listing: Listing


class Delivery(msgspec.Struct):
    """One webhook the storefront owes us: body bytes and headers are fixed at creation,
    so a retry or a duplicate carries exactly the first payload, as platforms do."""

    url: str
    body: bytes
    headers: dict[str, str]
    attempts: int = 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Simulator:
    """Base of a platform simulator. Subclasses add the platform's routes (`routes()`),
    name their limiters, and turn a storefront order into deliveries (`deliveries()`)."""

    platform = "base"
    RETRY_DELAYS_S: tuple[float, ...] = (0.05, 0.2, 1.0, 2.0)  # webhook retries, scaled down

    def __init__(
        self,
        listings: list[Listing],
        *,
        webhook_url: str = "",
        limits: bool = True,
        duplicate_rate: float = 0.0,
        retry_delays_s: tuple[float, ...] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.listings = listings
        self.by_sku = {listing.sku: listing for listing in listings}
        self.webhook_url = webhook_url
        self.limits_on = limits
        self.duplicate_rate = duplicate_rate
        self.retry_delays_s = self.RETRY_DELAYS_S if retry_delays_s is None else retry_delays_s
        self.options = options or {}
        self.faults = Faults()
        self.limiters: dict[str, TokenBucket] = {}
        self.reset()
        self._outbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self.setup()

    def setup(self) -> None:
        """What a platform keeps beside the base's state, from its listings and options."""

    def reset(self) -> None:
        self.quantities: dict[str, int] = {}  # by SKU: what the storefront can sell
        self.history: dict[str, list[tuple[int, int]]] = {}  # by SKU: (at_ms, quantity)
        self.calls = 0  # platform API calls answered (any status)
        self.updates = 0  # quantities set
        self.throttled = 0  # calls refused with 429
        self.orders: list[Order] = []
        self.delivered = 0  # webhook POSTs that got a 2xx
        self.failed_deliveries = 0  # webhook POSTs that did not
        self._order_seq = 0

    # -- quantities, for the platform routes --------------------------------------------

    def set_quantity(self, sku: str, quantity: int) -> None:
        self.quantities[sku] = quantity
        self.history.setdefault(sku, []).append((now_ms(), quantity))
        self.updates += 1

    # -- limits and faults ----------------------------------------------------------------

    def limiter(self, name: str, rate: float, burst: float) -> TokenBucket:
        bucket = self.limiters.get(name)
        if bucket is None:
            bucket = self.limiters[name] = TokenBucket(rate, burst)
        return bucket

    def over_limit(self, name: str, rate: float, burst: float, cost: float = 1.0) -> float:
        """0 if the call is within the named limit, else the seconds to wait (counted)."""
        if not self.limits_on:
            return 0.0
        wait = self.limiter(name, rate, burst).try_take(cost)
        if wait > 0:
            self.throttled += 1
        return wait

    async def fault(self) -> Response | None:
        """Applies the injected faults to one platform call; a response ends the call."""
        self.calls += 1
        f = self.faults
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        roll = random.random()
        if roll < f.timeout_rate:
            await asyncio.sleep(f.timeout_s)
            return Response(status_code=504)
        if roll < f.timeout_rate + f.error_rate:
            return JSONResponse({"errors": [{"message": "injected fault"}]}, status_code=503)
        return None

    # -- storefront -------------------------------------------------------------------------

    def next_order_id(self) -> str:
        self._order_seq += 1
        return f"{self._order_seq}"

    def take_order(self, sku: str, qty: int) -> Order | None:
        """Sells against the quantity last pushed, as the platform would."""
        listing = self.by_sku.get(sku)
        if listing is None or qty < 1 or self.quantities.get(sku, 0) < qty:
            return None
        self.quantities[sku] -= qty
        order = Order(
            order_id=self.next_order_id(), sku=sku, qty=qty, line_id="1",
            created_ms=now_ms(), listing=listing,
        )  # fmt: skip
        self.orders.append(order)
        for delivery in self.deliveries(order):
            self.send(delivery)
        return order

    def deliveries(self, order: Order) -> list[Delivery]:
        """The webhooks an order makes; platforms that we poll return none."""
        return []

    def send(self, delivery: Delivery) -> None:
        self._outbox.put_nowait(delivery)
        if self.duplicate_rate and random.random() < self.duplicate_rate:
            self._outbox.put_nowait(msgspec.structs.replace(delivery))

    async def _deliver_forever(self) -> None:
        while True:
            delivery = await self._outbox.get()
            task = asyncio.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def prepare(self, delivery: Delivery) -> None:
        """Called before each attempt (delivery.attempts is its number): a platform that signs
        each attempt afresh does it here."""

    async def _deliver(self, delivery: Delivery) -> None:
        assert self._http is not None
        for delay in (0.0, *self.retry_delays_s):
            await asyncio.sleep(delay)
            delivery.attempts += 1
            self.prepare(delivery)
            try:
                response = await self._http.post(
                    delivery.url, content=delivery.body, headers=delivery.headers
                )
            except httpx.HTTPError:
                self.failed_deliveries += 1
                continue
            if 200 <= response.status_code < 300:
                self.delivered += 1
                return
            self.failed_deliveries += 1

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Waits until every queued webhook has been delivered or given up."""
        deadline = time.monotonic() + timeout_s
        while (self._outbox.qsize() or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- the app --------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return []

    def state(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "quantities": self.quantities,
            "calls": self.calls,
            "updates": self.updates,
            "throttled": self.throttled,
            "orders": len(self.orders),
            "delivered": self.delivered,
            "failed_deliveries": self.failed_deliveries,
            "limits": self.limits_on,
        }

    def app(self) -> Starlette:
        async def state(request: Request) -> Response:
            return JSONResponse(self.state())

        async def limits(request: Request) -> Response:
            self.limits_on = bool((await request.json()).get("on", True))
            return JSONResponse({"limits": self.limits_on})

        async def faults(request: Request) -> Response:
            self.faults = msgspec.json.decode(await request.body(), type=Faults)
            return JSONResponse(msgspec.to_builtins(self.faults))

        async def orders(request: Request) -> Response:
            body = await request.json()
            order = self.take_order(str(body.get("sku", "")), int(body.get("qty", 1)))
            if order is None:
                return JSONResponse({"error": "not enough quantity"}, status_code=409)
            return JSONResponse(msgspec.to_builtins(order), status_code=201)

        async def history(request: Request) -> Response:
            return JSONResponse({"history": self.history, "updates": self.updates,
                                 "throttled": self.throttled})  # fmt: skip

        async def reset(request: Request) -> Response:
            self.reset()
            return JSONResponse({})

        control = [
            Route("/_sim/state", state, methods=["GET"]),
            Route("/_sim/limits", limits, methods=["POST"]),
            Route("/_sim/faults", faults, methods=["POST"]),
            Route("/_sim/orders", orders, methods=["POST"]),
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/history", history, methods=["GET"]),
        ]
        return Starlette(routes=[*control, *self.routes()], lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.running():
            yield

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The webhook deliverer, for as long as the app runs."""
        self._http = httpx.AsyncClient(timeout=5.0)
        worker = asyncio.create_task(self._deliver_forever())
        try:
            yield
        finally:
            worker.cancel()
            for task in list(self._tasks):
                task.cancel()
            await self._http.aclose()


Handler = Callable[[Request], Awaitable[Response]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: Starlette, port: int = 0) -> AsyncIterator[str]:
    """Runs an app on loopback in this event loop; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
