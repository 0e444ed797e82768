"""The eBay simulator and connector rig shared by tests/test_channel_ebay*.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.channels.base import (
    BadDelivery,
    Challenge,
    ChannelConfig,
    Delivery,
    Listing,
    Platform,
    Push,
    SignatureError,
)
from engine.channels.ebay import EbayConnector
from engine.channels.sim.base import Faults, serving
from engine.channels.sim.ebay import EbaySimulator

TOKEN = "v^1.1#user-token"
VERIFY = "verification-token-0123456789abcdef-0123456789"
LISTINGS = [
    Listing(f"SKU-{i}", {"sku": f"SKU-{i}", "offer_id": f"{5_000_000_000 + i}"}) for i in range(60)
]
FAST = {"retry_base_s": 0.01, "retry_cap_s": 0.05, "retry_attempts": 4}


@dataclass
class Receiver:
    """Our webhook endpoint, as api/ wires it: prepare(), then verify()."""

    connector: EbayConnector | None = None
    fail_first: int = 0  # answer 500 this many times, to make eBay retry
    seen: list[bytes] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    rejected: int = 0

    def reset(self, connector: EbayConnector) -> None:
        self.connector, self.fail_first, self.rejected = connector, 0, 0
        self.seen, self.deliveries = [], []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["GET", "POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append(body)
        if self.fail_first > 0:
            self.fail_first -= 1
            return Response(status_code=500)
        assert self.connector is not None
        try:
            await self.connector.prepare(request.headers)
            delivery = self.connector.verify(request.headers, body, str(request.url))
        except Challenge as challenge:
            return JSONResponse(challenge.body)
        except SignatureError:
            self.rejected += 1
            return Response(status_code=401)
        except BadDelivery:
            return Response(status_code=400)
        self.deliveries.append(delivery)
        return Response(status_code=204)


@dataclass
class Rig:
    sim: EbaySimulator
    conn: EbayConnector
    receiver: Receiver
    base: str
    http: httpx.AsyncClient

    async def order(self, sku: str, qty: int) -> str:
        response = await self.http.post(f"{self.base}/_sim/orders", json={"sku": sku, "qty": qty})
        assert response.status_code == 201, response.text
        return str(response.json()["order_id"])

    async def control(self, path: str, body: Any = None) -> Any:
        response = await self.http.post(f"{self.base}{path}", json=body or {})
        assert response.status_code < 300, response.text
        return response.json()


def make_connector(
    base: str,
    http: httpx.AsyncClient,
    token: str = TOKEN,
    verification: str = VERIFY,
    **options: Any,
) -> EbayConnector:
    config = ChannelConfig(
        channel="ebay",
        platform=Platform.EBAY,
        base_url=base,
        credentials={"access_token": token, "verification_token": verification},
        options={**FAST, **options},
        listings=tuple(LISTINGS),
    )
    return EbayConnector(config, http)


@contextlib.asynccontextmanager
async def started() -> AsyncIterator[Rig]:
    """One simulator and one webhook endpoint, for a test module's `servers` fixture:
    starting servers is slow, so each module shares them."""
    receiver = Receiver()
    async with contextlib.AsyncExitStack() as stack:
        hook = await stack.enter_async_context(serving(receiver.app())) + "/hook"
        sim = EbaySimulator(LISTINGS, webhook_url=hook)
        base = await stack.enter_async_context(serving(sim.app()))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=5.0))
        yield Rig(sim, make_connector(base, http), receiver, base, http)


@contextlib.asynccontextmanager
async def rig(
    servers: Rig,
    sim_options: dict[str, Any] | None = None,
    conn_options: dict[str, Any] | None = None,
    *,
    limits: bool = True,
    duplicate_rate: float = 0.0,
) -> AsyncIterator[Rig]:
    """The shared servers, configured afresh for one test."""
    sim, receiver = servers.sim, servers.receiver
    await sim.idle()
    sim.options = {"access_token": TOKEN, "verification_token": VERIFY, **(sim_options or {})}
    sim.limits_on, sim.duplicate_rate = limits, duplicate_rate
    sim.retry_delays_s = (0.01, 0.02, 0.05)
    sim.faults = Faults()
    sim.limiters.clear()
    sim.reset()
    conn = make_connector(servers.base, servers.http, **(conn_options or {}))
    receiver.reset(conn)
    yield Rig(sim, conn, receiver, servers.base, servers.http)
    await sim.idle()


async def stock(r: Rig, quantities: dict[str, int]) -> None:
    results = await r.conn.push([Push(sku, qty) for sku, qty in quantities.items()])
    assert all(result.ok for result in results), results


def envelope(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data
