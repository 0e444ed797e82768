"""The Shopify connector's inbound side against the Shopify simulator, over real HTTP
on loopback: webhooks, HMAC, rotation, payloads."""

from __future__ import annotations

import json

import httpx
import pytest
from shopify_rig import (
    DOCUMENTED_ORDER,
    DOCUMENTED_REFUND,
    OLD_SECRET,
    SHOP_DOMAIN,
    make_config,
    ms,
    shop,
    signed,
)

from engine.channels.base import (
    BadDelivery,
    EventKind,
    OrderEvent,
    OrderLine,
    Push,
    SignatureError,
)
from engine.channels.shopify import ShopifyConnector

# -- inbound --------------------------------------------------------------------------------


async def test_documented_examples_replay_verbatim() -> None:
    async with httpx.AsyncClient() as http:
        connector = ShopifyConnector(make_config("http://unused", [], {}), http)
        order = connector.verify(signed(DOCUMENTED_ORDER), DOCUMENTED_ORDER, "https://us/hook")
        refund = connector.verify(
            signed(DOCUMENTED_REFUND, "refunds/create"), DOCUMENTED_REFUND, "https://us/hook"
        )
    created_ms = ms("2008-01-10T16:00:00+00:00")
    assert order.delivery_id == f"{SHOP_DOMAIN}/b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    assert order.occurred_ms == created_ms
    line = OrderLine("518995019", "IPOD2008RED", 1)
    assert order.events == (OrderEvent(EventKind.CREATED, "450789469", (line,), created_ms),)
    refund_ms = ms("2025-04-02T16:38:15+00:00")
    line = OrderLine("703073504", "IPOD2008BLACK", 1)
    expected = OrderEvent(EventKind.REFUNDED, "450789469", (line,), refund_ms, "509562969", True)
    assert refund.events == (expected,)


async def test_signatures_are_checked_before_parsing_and_rotation_is_accepted() -> None:
    async with httpx.AsyncClient() as http:
        connector = ShopifyConnector(make_config("http://unused", [], {}), http)
        rotating = ShopifyConnector(
            make_config("http://unused", [], {}, previous_client_secret=OLD_SECRET), http
        )
        bad = [
            (
                signed(DOCUMENTED_ORDER),
                DOCUMENTED_ORDER.replace(b'"quantity": 1', b'"quantity": 9'),
            ),
            (signed(DOCUMENTED_ORDER, secret="wrong"), DOCUMENTED_ORDER),
            (signed(DOCUMENTED_ORDER, secret=OLD_SECRET), DOCUMENTED_ORDER),
            (signed(b"not json", **{"x-shopify-hmac-sha256": "bm9wZQ=="}), b"not json"),
            (signed(DOCUMENTED_ORDER, **{"x-shopify-hmac-sha256": "ünicode"}), DOCUMENTED_ORDER),
        ]
        for headers, body in bad:
            with pytest.raises(SignatureError):
                connector.verify(headers, body, "")
        missing = signed(DOCUMENTED_ORDER, **{"x-shopify-hmac-sha256": ""})
        with pytest.raises(SignatureError):
            connector.verify(missing, DOCUMENTED_ORDER, "")
        old = rotating.verify(signed(DOCUMENTED_ORDER, secret=OLD_SECRET), DOCUMENTED_ORDER, "")
        new = rotating.verify(signed(DOCUMENTED_ORDER), DOCUMENTED_ORDER, "")
        assert old.events == new.events and len(new.events) == 1
        with pytest.raises(SignatureError):
            rotating.verify(signed(DOCUMENTED_ORDER, secret="wrong"), DOCUMENTED_ORDER, "")


async def test_headers_shop_and_payload_shapes() -> None:
    async with httpx.AsyncClient() as http:
        connector = ShopifyConnector(
            make_config("http://unused", [], {"shop_domain": SHOP_DOMAIN}), http
        )
        for name in ("topic", "shop-domain", "api-version", "webhook-id"):
            headers = signed(DOCUMENTED_ORDER, **{f"x-shopify-{name}": ""})
            with pytest.raises(BadDelivery):
                connector.verify(headers, DOCUMENTED_ORDER, "")
        other_shop = signed(DOCUMENTED_ORDER, **{"x-shopify-shop-domain": "other.myshopify.com"})
        with pytest.raises(BadDelivery):
            connector.verify(other_shop, DOCUMENTED_ORDER, "")
        with pytest.raises(BadDelivery):
            connector.verify(signed(b"[not json"), b"[not json", "")
        ignored = connector.verify(signed(b"{}", "products/update"), b"{}", "")
        assert ignored.events == () and ignored.delivery_id.endswith("bf7d70bcd043")

        order = {
            "id": "gid://shopify/Order/820982911946154508",
            "updated_at": "2026-01-10T11:00:00-05:00",
            "cancelled_at": "2026-01-10T11:00:00-05:00",
            "line_items": [
                {"id": "866550311766439020", "sku": "A-1", "quantity": "2"},
                {"id": 141249953214522974, "sku": None, "quantity": 1},  # a custom item
                {"id": 141249953214522975, "quantity": 1},
            ],
        }
        body = json.dumps(order).encode()
        triggered = "2026-01-10T16:00:01.123456789Z"
        cancelled = connector.verify(
            signed(body, "orders/cancelled", **{"x-shopify-triggered-at": triggered}), body, ""
        )
    at_ms = ms("2026-01-10T16:00:01.123+00:00")
    line = OrderLine("866550311766439020", "A-1", 2)
    expected = OrderEvent(EventKind.CANCELLED, "820982911946154508", (line,), at_ms)
    assert cancelled.events == (expected,) and cancelled.occurred_ms == at_ms


async def test_storefront_webhooks_end_to_end() -> None:
    async with shop() as s:
        assert all(r.ok for r in await s.connector.push([Push("SKU-0", 5), Push("SKU-1", 4)]))
        placed = await s.order("SKU-0", 2)
        assert s.sim.quantities["SKU-0"] == 3
        [created] = s.inbox.events()
        line = OrderLine(placed["line_id"], "SKU-0", 2)
        assert (created.kind, created.order_id, created.lines) == (
            EventKind.CREATED,
            placed["order_id"],
            (line,),
        )
        names = {"x-shopify-topic", "x-shopify-hmac-sha256", "x-shopify-shop-domain"}
        names |= {"x-shopify-api-version", "x-shopify-webhook-id", "x-shopify-triggered-at"}
        assert names | {"x-shopify-event-id"} <= set(s.inbox.headers[0])

        cancel = await s.control(f"/_sim/orders/{placed['order_id']}/cancel", {"reason": "fraud"})
        assert cancel.json()["cancel_reason"] == "fraud"
        assert (await s.control(f"/_sim/orders/{placed['order_id']}/cancel", {})).status_code == 409
        cancelled = s.inbox.events()[-1]
        assert (cancelled.kind, cancelled.lines) == (EventKind.CANCELLED, (line,))
        assert cancelled.occurred_ms >= created.occurred_ms
        assert s.sim.quantities["SKU-0"] == 5

        second = await s.order("SKU-1", 3)
        refund = f"/_sim/orders/{second['order_id']}/refund"
        assert (await s.control(refund, {"qty": 1, "restock": True})).status_code == 201
        assert (await s.control(refund, {"qty": 1, "restock": False})).status_code == 201
        assert (await s.control(refund, {"qty": 5})).status_code == 409
        back, kept = s.inbox.events()[-2:]
        assert back.kind == kept.kind == EventKind.REFUNDED
        assert (back.restock, kept.restock) == (True, False)
        assert back.refund_id != kept.refund_id
        assert back.lines == kept.lines == (OrderLine(second["line_id"], "SKU-1", 1),)
        assert s.sim.quantities["SKU-1"] == 4 - 3 + 1
        ids = [d.delivery_id for d in s.inbox.accepted]
        assert len(ids) == len(set(ids)) == 5 and ids[0].startswith(f"{SHOP_DOMAIN}/")


async def test_bad_signature_is_refused_and_counts_nothing() -> None:
    async with shop(options={"signing_secret": "a-secret-we-do-not-know"}) as s:
        s.sim.quantities["SKU-0"] = 4
        await s.order("SKU-0", 1)
        assert s.inbox.accepted == [] and s.inbox.rejected == 9  # the first try and 8 retries
        assert (s.sim.delivered, s.sim.failed_deliveries) == (0, 9)


async def test_rotation_with_the_simulator() -> None:
    rotating = {"previous_client_secret": OLD_SECRET}
    async with shop(options={"signing_secret": OLD_SECRET}, credentials=rotating) as s:
        s.sim.quantities["SKU-0"] = 4
        await s.order("SKU-0", 1)
        assert s.inbox.rejected == 0 and len(s.inbox.events()) == 1


async def test_retries_and_duplicates_keep_the_webhook_id() -> None:
    async with shop(fail_first=3, duplicate_rate=1.0) as s:
        s.sim.quantities["SKU-0"] = 4
        await s.order("SKU-0", 1)
        webhook_ids = {h["x-shopify-webhook-id"] for h in s.inbox.headers}
        assert len(s.inbox.headers) == 5 and len(webhook_ids) == 1
        first, second = s.inbox.accepted
        assert first.delivery_id == second.delivery_id and first.events == second.events
