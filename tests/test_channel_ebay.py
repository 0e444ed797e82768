"""The eBay connector against the eBay simulator, over real HTTP on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.channels.base import (
    BadDelivery,
    Challenge,
    ChannelConfig,
    Delivery,
    EventKind,
    Listing,
    OrderLine,
    Platform,
    Push,
    SignatureError,
)
from engine.channels.ebay import EbayConnector, iso_ms, to_iso
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


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[Rig]:
    """One simulator and one webhook endpoint for the module: starting servers is slow."""
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


# -- inbound ----------------------------------------------------------------------------------


async def test_order_confirmation_is_signed_and_fetched(servers: Rig) -> None:
    async with rig(servers) as r:
        await stock(r, {"SKU-0": 5})
        order_id = await r.order("SKU-0", 2)
        await r.sim.idle()
        [delivery] = r.receiver.deliveries
        body = r.receiver.seen[0]
        note = envelope(body)["notification"]
        assert envelope(body)["metadata"]["topic"] == "ORDER_CONFIRMATION"
        assert b", " not in body and b": " not in body  # compact JSON, signed as sent
        assert note["publishAttemptCount"] == 1
        assert delivery.delivery_id == note["notificationId"]
        assert delivery.fetch == (order_id,)
        assert delivery.occurred_ms == iso_ms(note["eventDate"])
        [event] = await r.conn.fetch(order_id)
        line_id = note["data"]["lineItemId"]
        assert event.kind is EventKind.CREATED and event.order_id == order_id
        assert event.lines == (OrderLine(line_id=line_id, sku="SKU-0", qty=2),)
        assert event.occurred_ms == delivery.occurred_ms
        assert r.sim.quantities["SKU-0"] == 3
        calls = r.sim.calls
        await r.order("SKU-0", 1)
        await r.sim.idle()
        assert len(r.receiver.deliveries) == 2
        assert r.sim.calls == calls  # the public key came from the cache


async def test_multi_line_checkout_notifies_per_line_with_stable_line_ids(servers: Rig) -> None:
    async with rig(servers) as r:
        await stock(r, {"SKU-0": 5, "SKU-1": 5})
        lines = [{"sku": "SKU-0", "qty": 1}, {"sku": "SKU-1", "qty": 2}]
        order = await r.control("/_sim/carts", {"lines": lines})
        await r.sim.idle()
        first = list(r.receiver.deliveries)
        assert len(first) == 2 and len({d.delivery_id for d in first}) == 2
        assert {d.fetch for d in first} == {(order["orderId"],)}
        [before] = await r.conn.fetch(order["orderId"])
        assert [(line.sku, line.qty) for line in before.lines] == [("SKU-0", 1), ("SKU-1", 2)]
        assert (await r.control(f"/_sim/orders/{order['orderId']}/reconfirm"))["sent"] == 2
        await r.sim.idle()
        again = r.receiver.deliveries[2:]
        assert len(again) == 2
        assert not {d.delivery_id for d in again} & {d.delivery_id for d in first}
        [after] = await r.conn.fetch(order["orderId"])
        assert after.lines == before.lines


async def test_retries_keep_the_id_and_bump_publish_attempt_count(servers: Rig) -> None:
    async with rig(servers) as r:
        await stock(r, {"SKU-0": 5})
        r.receiver.fail_first = 2
        await r.order("SKU-0", 1)
        await r.sim.idle()
        notes = [envelope(body)["notification"] for body in r.receiver.seen]
        assert [n["publishAttemptCount"] for n in notes] == [1, 2, 3]
        assert len({n["notificationId"] for n in notes}) == 1
        [delivery] = r.receiver.deliveries  # the re-signed third attempt verifies
        assert delivery.delivery_id == notes[0]["notificationId"]
        assert (r.sim.delivered, r.sim.failed_deliveries) == (1, 2)


async def test_duplicates_carry_the_same_notification_id(servers: Rig) -> None:
    async with rig(servers, duplicate_rate=1.0) as r:
        await stock(r, {"SKU-0": 5})
        await r.order("SKU-0", 1)
        await r.sim.idle()
        first, second = r.receiver.deliveries
        assert first.delivery_id == second.delivery_id and first.fetch == second.fetch


async def test_bad_signatures_raise_signature_error(servers: Rig) -> None:
    async with rig(servers) as r:
        await stock(r, {"SKU-0": 5})
        await r.order("SKU-0", 1)
        await r.sim.idle()
        body = r.receiver.seen[0]
        header = json.loads(base64.b64decode(r.sim.sign(body)))

        def with_header(**changes: Any) -> dict[str, str]:
            value = json.dumps({**header, **changes}).encode()
            return {"x-ebay-signature": base64.b64encode(value).decode()}

        good = with_header()
        assert r.conn.verify(good, body, "http://x/hook").fetch
        rogue = ec.generate_private_key(ec.SECP256R1()).sign(body, ec.ECDSA(hashes.SHA1()))
        forged = [
            (good, body.replace(b'"orderId":"12-', b'"orderId":"13-')),
            ({}, body),
            ({"x-ebay-signature": "not base64 json"}, body),
            (with_header(signature=base64.b64encode(rogue).decode()), body),
            (with_header(signature="%%%"), body),
            (with_header(digest="SHA256"), body),
        ]
        for headers, payload in forged:
            with pytest.raises(SignatureError):
                r.conn.verify(headers, payload, "http://x/hook")
        unknown = with_header(kid="no-such-kid")
        await r.conn.prepare(unknown)
        calls = r.sim.calls
        await r.conn.prepare(unknown)  # the miss is cached too
        assert r.sim.calls == calls
        with pytest.raises(SignatureError):
            r.conn.verify(unknown, body, "http://x/hook")


async def test_notifications_signed_by_another_key_change_nothing(servers: Rig) -> None:
    async with rig(servers) as r:
        other = EbaySimulator(LISTINGS, options={"access_token": TOKEN})
        async with serving(other.app()) as other_base:
            r.receiver.connector = make_connector(other_base, r.http)
            await stock(r, {"SKU-0": 5})
            await r.order("SKU-0", 1)
            await r.sim.idle()
        assert r.receiver.deliveries == []
        assert r.receiver.rejected == 4  # the first attempt and three retries
        assert (r.sim.delivered, r.sim.failed_deliveries) == (0, 4)


async def test_compact_reserialization_also_verifies(servers: Rig) -> None:
    """eBay's SDK verifies JSON.stringify(message); a re-indented body still checks out."""
    async with rig(servers) as r:
        await stock(r, {"SKU-0": 5})
        await r.order("SKU-0", 1)
        await r.sim.idle()
        body = r.receiver.seen[0]
        headers = {"x-ebay-signature": r.sim.sign(body)}
        pretty = json.dumps(json.loads(body), indent=2).encode()
        assert r.conn.verify(headers, pretty, "http://x/hook").fetch
        changed = json.loads(body)
        changed["notification"]["data"]["orderId"] = "99-99999-99999"
        with pytest.raises(SignatureError):
            r.conn.verify(headers, json.dumps(changed, indent=2).encode(), "http://x/hook")


async def test_other_topics_and_unreadable_bodies(servers: Rig) -> None:
    async with rig(servers) as r:
        await r.conn.prepare({"x-ebay-signature": r.sim.sign(b"{}")})

        def signed(message: Any) -> tuple[dict[str, str], bytes]:
            body = json.dumps(message, separators=(",", ":")).encode()
            return {"x-ebay-signature": r.sim.sign(body)}, body

        note: dict[str, Any] = {"notificationId": "n-1", "eventDate": "2026-01-02T03:04:05.678Z"}
        deletion = {"metadata": {"topic": "MARKETPLACE_ACCOUNT_DELETION"}, "notification": note}
        delivery = r.conn.verify(*signed(deletion), "http://x/hook")
        assert (delivery.delivery_id, delivery.fetch) == ("n-1", ())
        assert delivery.occurred_ms == iso_ms("2026-01-02T03:04:05.678Z")
        no_order = {"metadata": {"topic": "ORDER_CONFIRMATION"}, "notification": note}
        unreadable: list[Any] = [no_order, {"metadata": {}}, [1, 2]]
        for message in unreadable:
            with pytest.raises(BadDelivery):
                r.conn.verify(*signed(message), "http://x/hook")
        numeric = {
            **no_order,
            "notification": {**note, "notificationId": 42, "data": {"orderId": 7}},
        }
        assert r.conn.verify(*signed(numeric), "http://x/hook").fetch == ("7",)


async def test_endpoint_challenge(servers: Rig) -> None:
    async with rig(servers) as r:
        assert (await r.control("/_sim/challenge"))["ok"] is True
        r.receiver.connector = make_connector(r.base, r.http, verification="wrong")
        assert (await r.control("/_sim/challenge"))["ok"] is False
        conn = make_connector(r.base, r.http, endpoint_url="https://shop.example/ebay")
        with pytest.raises(Challenge) as raised:
            conn.verify({}, b"", "http://10.0.0.1:8080/ebay?challenge_code=abc")
        expected = hashlib.sha256(f"abc{VERIFY}https://shop.example/ebay".encode()).hexdigest()
        assert raised.value.body == {"challengeResponse": expected}


async def test_public_key_cache_expires(servers: Rig) -> None:
    async with rig(servers, conn_options={"key_cache_s": 0.05}) as r:
        headers = {"x-ebay-signature": r.sim.sign(b"{}")}
        await r.conn.prepare(headers)
        calls = r.sim.calls
        await r.conn.prepare(headers)
        assert r.sim.calls == calls
        time.sleep(0.06)
        await r.conn.prepare(headers)
        assert r.sim.calls == calls + 1


async def test_cancellation_arrives_by_poll_and_fetch(servers: Rig) -> None:
    async with rig(servers) as r:
        await stock(r, {"SKU-0": 5})
        since = int(time.time() * 1000) - 1000
        order_id = await r.order("SKU-0", 2)
        await r.sim.idle()
        [created] = await r.conn.fetch(order_id)
        await r.control(f"/_sim/orders/{order_id}/cancel")
        await r.sim.idle()
        assert len(r.receiver.seen) == 1  # eBay sends no notification for it
        assert r.sim.quantities["SKU-0"] == 5
        [polled] = await r.conn.poll(since)
        assert polled.kind is EventKind.CANCELLED and polled.order_id == order_id
        assert polled.occurred_ms > created.occurred_ms
        assert polled.lines == created.lines
        [late] = await r.conn.fetch(order_id)  # the first notification, redelivered late
        assert late == polled
        assert await r.conn.poll(polled.occurred_ms + 1) == []


async def test_poll_reads_every_page(servers: Rig) -> None:
    async with rig(servers, conn_options={"page_size": 2}) as r:
        await stock(r, {"SKU-0": 10})
        orders = {await r.order("SKU-0", 1) for _ in range(5)}
        calls = r.sim.calls
        events = await r.conn.poll(0)
        assert {event.order_id for event in events} == orders and len(events) == 5
        assert r.sim.calls == calls + 3


async def test_fetch_errors_are_raised(servers: Rig) -> None:
    async with rig(servers) as r:
        with pytest.raises(httpx.HTTPStatusError):
            await r.conn.fetch("99-99999-99999")
        calls = r.sim.calls
        bad = make_connector(r.base, r.http, token="expired")
        with pytest.raises(httpx.HTTPStatusError):
            await bad.fetch("99-99999-99999")
        assert r.sim.calls == calls + 1


async def test_platform_calls_need_a_bearer_token(servers: Rig) -> None:
    async with rig(servers) as r:
        paths = [
            ("POST", "/sell/inventory/v1/bulk_update_price_quantity"),
            ("GET", "/sell/fulfillment/v1/order"),
            ("GET", "/sell/fulfillment/v1/order/1"),
            ("GET", f"/commerce/notification/v1/public_key/{r.sim.kid}"),
        ]
        for method, path in paths:
            response = await r.http.request(method, r.base + path, json={"requests": []})
            assert response.status_code == 401, path
        assert r.sim.updates == 0


# -- outbound ---------------------------------------------------------------------------------


async def test_pushes_go_in_batches_of_25(servers: Rig) -> None:
    async with rig(servers, limits=False) as r:
        pushes = [Push(f"SKU-{i}", i) for i in range(60)]
        results = await r.conn.push(pushes)
        assert [result.sku for result in results] == [p.sku for p in pushes]
        assert all(result.ok for result in results)
        assert r.sim.batch_sizes == [25, 25, 10]
        assert r.sim.quantities == {p.sku: p.quantity for p in pushes}
        stale, other, latest = await r.conn.push(
            [Push("SKU-0", 9), Push("SKU-1", 9), Push("SKU-0", 8)]
        )
        assert stale == latest and latest.ok and other.ok  # superseded in the same call
        assert r.sim.batch_sizes[-1] == 2 and r.sim.revisions["5000000000"] == 2
        assert r.sim.quantities["SKU-0"] == 8


async def test_one_sku_per_call_reading(servers: Rig) -> None:
    async with rig(servers, sim_options={"one_sku_per_call": True}) as r:
        results = await r.conn.push([Push("SKU-0", 1), Push("SKU-1", 2)])
        assert [(x.ok, x.retry) for x in results] == [(False, False)] * 2
        assert r.sim.calls == 1 and r.sim.updates == 0
        r.conn.one_sku_per_call = True
        assert all(x.ok for x in await r.conn.push([Push("SKU-0", 1), Push("SKU-1", 2)]))
        assert r.sim.batch_sizes == [1, 1]


async def test_per_item_results(servers: Rig) -> None:
    async with rig(servers) as r:
        r.conn.by_sku["SKU-1"] = Listing("SKU-1", {"sku": "SKU-1", "offer_id": "404"})
        pushes = [Push("SKU-0", 3), Push("SKU-1", 3), Push("SKU-X", 3), Push("SKU-2", -1)]
        ok, unknown_offer, no_listing, negative = await r.conn.push(pushes)
        assert ok.ok and negative.ok and r.sim.quantities == {"SKU-0": 3, "SKU-2": 0}
        assert (unknown_offer.ok, unknown_offer.retry) == (False, False)
        assert unknown_offer.error.startswith("404")
        assert (no_listing.ok, no_listing.retry) == (False, False)
        assert r.sim.batch_sizes == [3]


async def test_convergence_after_many_pushes(servers: Rig) -> None:
    rng = random.Random(6)
    async with rig(servers, conn_options={"rate_per_s": None}, limits=False) as r:
        last: dict[str, int] = {}
        for _ in range(20):
            size = rng.randrange(1, 30)
            pushes = [Push(f"SKU-{rng.randrange(8)}", rng.randrange(50)) for _ in range(size)]
            results = await r.conn.push(pushes)
            assert all(result.ok for result in results)
            last.update((p.sku, p.quantity) for p in pushes)
        assert r.sim.quantities == last
        assert all(r.sim.item_qty[sku] == qty for sku, qty in last.items())


async def test_revision_budget_keeps_a_reserve_for_selling_out(servers: Rig) -> None:
    budget = {"revisions_per_day": 5}
    async with rig(
        servers, sim_options=budget, conn_options={**budget, "revision_reserve": 2}
    ) as r:
        for qty in (10, 9, 8):
            assert (await r.conn.push([Push("SKU-0", qty)]))[0].ok
        calls = r.sim.calls
        held, other = await r.conn.push([Push("SKU-0", 7), Push("SKU-1", 7)])
        assert (held.ok, held.retry, held.error) == (False, True, "daily revision limit")
        assert other.ok and r.sim.batch_sizes[-1] == 1 and r.sim.calls == calls + 1
        for _ in range(2):
            assert (await r.conn.push([Push("SKU-0", 0)]))[0].ok
        calls = r.sim.calls
        [spent] = await r.conn.push([Push("SKU-0", 0)])
        assert (spent.ok, spent.retry, spent.error) == (False, True, "daily revision limit")
        assert r.sim.calls == calls
        assert r.sim.revisions["5000000000"] == 5 and r.sim.quantities["SKU-0"] == 0


async def test_the_platform_refusing_a_revision_marks_the_offer_spent(servers: Rig) -> None:
    platform_budget, our_budget = {"revisions_per_day": 2}, {"revision_reserve": 0}
    async with rig(servers, sim_options=platform_budget, conn_options=our_budget) as r:
        for qty in (3, 2):
            assert (await r.conn.push([Push("SKU-0", qty)]))[0].ok
        [refused] = await r.conn.push([Push("SKU-0", 1)])
        assert (refused.ok, refused.retry, refused.error) == (False, True, "daily revision limit")
        calls = r.sim.calls
        [held] = await r.conn.push([Push("SKU-0", 0)])
        assert held.retry and r.sim.calls == calls
        assert r.sim.quantities["SKU-0"] == 2


async def test_the_connector_paces_itself_under_the_limit(servers: Rig) -> None:
    limits = {"rate_per_s": 100, "burst": 5, "one_sku_per_call": True}
    async with rig(servers, sim_options=limits, conn_options=limits) as r:
        results = [
            result
            for batch in range(4)
            for result in await r.conn.push([Push(f"SKU-{batch * 10 + i}", i) for i in range(10)])
        ]
        assert all(result.ok for result in results)
        assert r.sim.calls == 40 and r.sim.throttled == 0


async def test_a_429_retry_after_is_honoured(servers: Rig) -> None:
    sim = {"rate_per_s": 10, "burst": 1, "one_sku_per_call": True}
    conn = {"rate_per_s": 1000, "one_sku_per_call": True, "retry_cap_s": 1.0}
    async with rig(servers, sim_options=sim, conn_options=conn) as r:
        started = time.monotonic()
        results = await r.conn.push([Push(f"SKU-{i}", i) for i in range(8)])
        assert all(result.ok for result in results)
        assert 0 < r.sim.throttled <= 16
        assert time.monotonic() - started >= 0.6  # 8 calls at 10/s with a burst of 1


async def test_limits_off_lifts_the_sim_limit(servers: Rig) -> None:
    async with rig(servers, sim_options={"rate_per_s": 1, "burst": 1}, limits=False) as r:
        r.conn.limiter.rate = None
        for i in range(10):
            assert (await r.conn.push([Push("SKU-0", i)]))[0].ok
        assert r.sim.throttled == 0


async def test_the_daily_quota_answers_429_until_midnight(servers: Rig) -> None:
    async with rig(
        servers, sim_options={"daily_quota": 2}, conn_options={"retry_attempts": 2}
    ) as r:
        for qty in (1, 2):
            assert (await r.conn.push([Push("SKU-0", qty)]))[0].ok
        [late] = await r.conn.push([Push("SKU-0", 3)])
        assert (late.ok, late.retry) == (False, True)
        assert r.sim.throttled == 2 and r.sim.quantities["SKU-0"] == 2
        response = await r.http.get(
            f"{r.base}/sell/fulfillment/v1/order", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 429
        assert 0 < int(response.headers["retry-after"]) <= 25 * 3600


async def test_server_errors_are_retried(servers: Rig) -> None:
    async with rig(servers, conn_options={"retry_attempts": 10}) as r:
        await r.control("/_sim/faults", {"error_rate": 1.0})
        [failed] = await r.conn.push([Push("SKU-0", 4)])
        assert (failed.ok, failed.retry) == (False, True) and r.sim.calls == 10
        random.seed(11)
        await r.control("/_sim/faults", {"error_rate": 0.5})
        calls = r.sim.calls
        results = await r.conn.push([Push(f"SKU-{i}", i) for i in range(5)])
        assert all(result.ok for result in results)
        assert r.sim.calls > calls + 1  # one call, retried until it went through
        assert r.sim.quantities == {f"SKU-{i}": i for i in range(5)}


async def test_timeouts_are_retried_then_given_up(servers: Rig) -> None:
    async with rig(servers) as r, httpx.AsyncClient(timeout=0.1) as impatient:
        conn = make_connector(r.base, impatient, retry_attempts=2)
        await r.control("/_sim/faults", {"timeout_rate": 1.0, "timeout_s": 0.3})
        [result] = await conn.push([Push("SKU-0", 4)])
        assert (result.ok, result.retry) == (False, True) and r.sim.calls == 2
        await r.control("/_sim/faults", {})
        assert (await conn.push([Push("SKU-0", 4)]))[0].ok


async def test_client_errors_are_not_retried(servers: Rig) -> None:
    async with rig(servers) as r:
        bad = make_connector(r.base, r.http, token="expired")
        [result] = await bad.push([Push("SKU-0", 4)])
        assert (result.ok, result.retry) == (False, False) and "401" in result.error
        assert r.sim.calls == 1 and r.sim.updates == 0


def test_timestamps_round_trip() -> None:
    assert to_iso(iso_ms("2021-03-19T20:43:59.462Z")) == "2021-03-19T20:43:59.462Z"
    assert iso_ms("1970-01-01T00:00:01.001Z") == 1001
