"""The eBay connector's inbound side against the eBay simulator, over real HTTP on
loopback: notifications, signatures, orders."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from ebay_rig import (
    LISTINGS,
    TOKEN,
    VERIFY,
    Rig,
    envelope,
    make_connector,
    rig,
    started,
    stock,
)

from engine.channels.base import (
    BadDelivery,
    Challenge,
    EventKind,
    OrderLine,
    SignatureError,
)
from engine.channels.ebay import iso_ms
from engine.channels.sim.base import serving
from engine.channels.sim.ebay import EbaySimulator


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[Rig]:
    async with started() as shared:
        yield shared


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
