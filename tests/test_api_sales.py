"""Flash sales over HTTP: define a sale, join and poll its queue, hold with the admission
token; every refusal is its documented problem and changes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from helpers import Api

from api import client as sg
from api.client import Client
from engine.sales import Ticket, TicketState


def now_ms() -> int:
    return int(time.time() * 1000)


def client(api: Api, role: str = "checkout") -> Client:
    transport = httpx.ASGITransport(app=api.app)
    return Client("http://stockguard.test", api.keys[role], transport=transport, retries=0)


@pytest.fixture
async def drop(api_shop: Api) -> Api:
    """Sale "drop": 10 x A on web, 2 per customer, admitting 1000 buyers a second."""
    await api_shop.engine.receive("A", "wh1", 10)
    await api_shop.engine.receive("B", "wh1", 10)
    start = now_ms() - 1000
    sale: dict[str, Any] = {
        "channel": "web", "skus": ["A"], "start_ms": start, "end_ms": start + 600_000,
        "rate_per_s": 1000, "max_active": 100, "token_ttl_ms": 60_000, "limit": 2,
    }  # fmt: skip
    r = await api_shop.http.put("/v1/sales/drop", json=sale)
    assert r.status_code == 200, r.text
    return api_shop


async def admitted(c: Client, customer: str) -> Ticket:
    ticket = await c.join("drop", customer)
    for _ in range(200):
        if ticket.state is not TicketState.WAITING:
            return ticket
        await asyncio.sleep(ticket.poll_after_ms / 1000 / 20)
        ticket = await c.poll(ticket, customer)
    raise AssertionError("never admitted")


async def test_join_poll_and_hold_with_the_admission(drop: Api) -> None:
    async with client(drop) as c:
        ticket = await admitted(c, "alice")
        assert ticket.state is TicketState.ADMITTED and ticket.token
        hold = await c.hold(
            "web", {"A": 2}, ttl_ms=60_000, customer="alice", admission=ticket.token
        )
        assert hold.state == "held"
        with pytest.raises(sg.AdmissionUsedError):
            await c.hold("web", {"A": 1}, ttl_ms=60_000, customer="alice", admission=ticket.token)
        again = await admitted(c, "alice")  # after a hold, a customer may queue again
        with pytest.raises(sg.LimitExceededError) as refused:
            await c.hold("web", {"A": 1}, ttl_ms=60_000, customer="alice", admission=again.token)
        assert (refused.value.data["limit"], refused.value.data["used"]) == (2, 2)
    stats = (await drop.http.get("/v1/sales/drop")).json()
    assert stats["admitted"] == 2 and stats["sale"]["limit"] == 2


async def test_holds_of_sale_skus_need_a_valid_token(drop: Api) -> None:
    async with client(drop) as c:
        with pytest.raises(sg.AdmissionRequiredError):
            await c.hold("web", {"A": 1, "B": 1}, ttl_ms=60_000, customer="bob")
        ticket = await admitted(c, "bob")
        assert ticket.token is not None
        forged = ticket.token[:-4] + ("AAAA" if not ticket.token.endswith("AAAA") else "BBBB")
        with pytest.raises(sg.AdmissionError) as bad:
            await c.hold("web", {"A": 1}, ttl_ms=60_000, customer="bob", admission=forged)
        assert bad.value.status == 403 and bad.value.kind == "admission-invalid"
        with pytest.raises(sg.AdmissionError):  # another customer's token
            await c.hold("web", {"A": 1}, ttl_ms=60_000, customer="eve", admission=ticket.token)
        # Not in the sale: another SKU, or the sale's SKU on another channel.
        await c.hold("web", {"B": 1}, ttl_ms=60_000)
        await c.hold("amazon", {"A": 1}, ttl_ms=60_000)
    stock = await drop.engine.stock("A")
    assert sum(row.held for row in stock.locations) == 1  # only amazon's hold


async def test_sold_out_is_told_to_new_joins(drop: Api) -> None:
    await drop.engine.adjust("A", "wh1", -8, reason="two left")
    async with client(drop) as c:
        ticket = await admitted(c, "carol")
        await c.hold("web", {"A": 2}, ttl_ms=60_000, customer="carol", admission=ticket.token)
        await asyncio.sleep(0.25)
        assert (await c.join("drop", "dave")).state is TicketState.SOLD_OUT


async def test_sale_problems(drop: Api) -> None:
    http = drop.http
    checkout = drop.auth("checkout")
    r = await http.post("/v1/sales/nope/queue", json={"customer": "a"}, headers=checkout)
    assert r.status_code == 404 and r.json()["type"].endswith("/unknown-sale")
    r = await http.get("/v1/sales/drop/queue/nothing?customer=a", headers=checkout)
    assert r.status_code == 404 and r.json()["type"].endswith("/ticket-not-found")
    r = await http.get("/v1/sales/drop/queue/nothing", headers=checkout)
    assert r.status_code == 422 and r.json()["field"] == "customer"
    r = await http.post("/v1/sales/drop/queue", json={"customer": ""}, headers=checkout)
    assert r.status_code == 422
    r = await http.put("/v1/sales/x", json={"channel": "web"}, headers=checkout)
    assert r.status_code == 403  # operators define sales
    past = now_ms() - 10_000
    body = {"channel": "web", "skus": ["B"], "start_ms": past, "end_ms": past + 1000,
            "rate_per_s": 1, "max_active": 1, "token_ttl_ms": 1000, "limit": 1}  # fmt: skip
    assert (await http.put("/v1/sales/old", json=body)).status_code == 200
    r = await http.post("/v1/sales/old/queue", json={"customer": "a"}, headers=checkout)
    assert r.status_code == 410 and r.json()["type"].endswith("/sale-ended")
    r = await http.put("/v1/sales/bad", json={**body, "skus": ["NOPE"]})
    assert r.status_code == 404 and r.json()["type"].endswith("/unknown-sku")
    r = await http.put("/v1/sales/bad", json={**body, "end_ms": past})
    assert r.status_code == 422
