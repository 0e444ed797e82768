"""The Amazon connector against the Amazon simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx
import pytest

from engine.channels.amazon import AmazonConnector, AmazonError, parse_ms, parse_notification
from engine.channels.base import (
    ChannelConfig,
    EventKind,
    Listing,
    OrderLine,
    Platform,
    Push,
    SignatureError,
)
from engine.channels.sim.amazon import AmazonSimulator, Message
from engine.channels.sim.base import now_ms, serving

TOKEN = "Atza|test-access-token"
SELLER = "A3TH9S8BH6GOGM"
MARKET = "ATVPDKIKX0DER"
LISTINGS = [
    Listing(
        sku=f"SKU-{i}",
        ids={"seller_sku": f"AMZ/{i} x", "marketplace_id": MARKET, "product_type": "LUGGAGE"},
    )
    for i in range(20)
]
GHOST = Listing(sku="GHOST", ids={"seller_sku": "NOT-ON-AMAZON", "product_type": "LUGGAGE"})


class Rig(NamedTuple):
    sim: AmazonSimulator
    connector: AmazonConnector
    http: httpx.AsyncClient
    url: str


@contextlib.asynccontextmanager
async def rig(
    *,
    options: dict[str, Any] | None = None,
    sim_options: dict[str, Any] | None = None,
    token: str = TOKEN,
    limits: bool = True,
    duplicate_rate: float = 0.0,
    timeout_s: float = 5.0,
) -> AsyncIterator[Rig]:
    shared = {"access_token": TOKEN, "seller_id": SELLER}
    sim = AmazonSimulator(
        LISTINGS, limits=limits, duplicate_rate=duplicate_rate,
        options={**shared, **(sim_options or {})},
    )  # fmt: skip
    async with serving(sim.app()) as url, httpx.AsyncClient(timeout=timeout_s) as http:
        config = ChannelConfig(
            channel="amazon-us",
            platform=Platform.AMAZON,
            base_url=url,
            credentials={"access_token": token},
            options={
                "seller_id": SELLER,
                "retry_base_s": 0.01,
                "feed_poll_s": 0.01,
                "wait_s": 0,
                **(options or {}),
            },
            listings=(*LISTINGS, GHOST),
        )
        yield Rig(sim, AmazonConnector(config, http), http, url)


def pushes(quantities: dict[int, int]) -> list[Push]:
    return [Push(sku=f"SKU-{i}", quantity=q) for i, q in quantities.items()]


def expected(quantities: dict[int, int]) -> dict[str, int]:
    return {f"SKU-{i}": q for i, q in quantities.items()}


async def stock(r: Rig, quantities: dict[int, int]) -> None:
    assert all(res.ok for res in await r.connector.push(pushes(quantities)))
    await r.sim.settle()


async def order(r: Rig, sku: str, qty: int) -> str:
    response = await r.http.post(f"{r.url}/_sim/orders", json={"sku": sku, "qty": qty})
    assert response.status_code == 201, response.text
    return str(response.json()["order_id"])


# -- outbound: patchListingsItem ---------------------------------------------------------


async def test_patch_is_accepted_then_applied_asynchronously() -> None:
    async with rig(sim_options={"apply_delay_ms": 100}) as r:
        results = await r.connector.push(pushes({0: 7, 1: 0, 2: 12}))
        assert [(x.sku, x.ok) for x in results] == [
            ("SKU-0", True),
            ("SKU-1", True),
            ("SKU-2", True),
        ]
        assert r.sim.quantities == {}  # ACCEPTED means accepted for processing
        await r.sim.settle()
        assert r.sim.quantities == expected({0: 7, 1: 0, 2: 12})
        assert r.sim.patch_ops == ["merge"] * 3


async def test_pushes_converge_on_the_last_absolute_values() -> None:
    async with rig() as r:
        for round_ in range(3):
            await stock(r, {i: 10 * round_ + i for i in range(2)})
        assert r.sim.quantities == expected({0: 20, 1: 21})
        assert [q for _, q in r.sim.history["SKU-1"]] == [1, 11, 21]


async def test_patch_wire_format_and_headers() -> None:
    async with rig() as r:
        url = f"{r.url}/listings/2021-08-01/items/{SELLER}/AMZ%2F5%20x"
        body = {
            "productType": "LUGGAGE",
            "patches": [{"op": "replace", "path": "/attributes/fulfillment_availability",
                         "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 10}]}],
        }  # fmt: skip
        params = {"marketplaceIds": MARKET}
        ok = await r.http.patch(
            url, params=params, json=body, headers={"x-amz-access-token": TOKEN}
        )
        assert ok.status_code == 200
        assert ok.json()["sku"] == "AMZ/5 x" and ok.json()["status"] == "ACCEPTED"
        assert ok.json()["issues"] == [] and ok.json()["submissionId"]
        assert ok.headers["x-amzn-RequestId"] and ok.headers["x-amzn-RateLimit-Limit"] == "5.0"
        for headers in ({}, {"x-amz-access-token": "Atza|wrong"}):
            refused = await r.http.patch(url, params=params, json=body, headers=headers)
            assert refused.status_code == 403
            assert refused.json()["errors"][0]["code"] == "Unauthorized"
            assert refused.headers["x-amzn-RequestId"]
        auth = {"x-amz-access-token": TOKEN}
        for value in ([5], [{"fulfillment_channel_code": "DEFAULT", "quantity": -1}]):
            wrong = {**body, "patches": [{**body["patches"][0], "value": value}]}
            invalid = await r.http.patch(url, params=params, json=wrong, headers=auth)
            assert invalid.status_code == 200 and invalid.json()["status"] == "INVALID"
        bad = await r.http.patch(url, params=params, content=b"{", headers=auth)
        assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "InvalidInput"
        await r.sim.settle()
        assert r.sim.quantities == {"SKU-5": 10}
        assert r.sim.updates == 1


async def test_replace_op_is_configurable() -> None:
    async with rig(options={"patch_op": "replace"}) as r:
        await stock(r, {0: 3})
        assert r.sim.patch_ops == ["replace"]
        with pytest.raises(ValueError, match="patch_op"):
            AmazonConnector(
                ChannelConfig(channel="a", platform=Platform.AMAZON, base_url=r.url,
                              options={"seller_id": SELLER, "patch_op": "add"}),
                r.http,
            )  # fmt: skip
        with pytest.raises(KeyError, match="seller_id"):
            AmazonConnector(
                ChannelConfig(channel="a", platform=Platform.AMAZON, base_url=r.url), r.http
            )


async def test_wrong_token_is_refused_and_not_retried() -> None:
    async with rig(token="Atza|stolen") as r:
        [result] = await r.connector.push(pushes({0: 5}))
        assert not result.ok and not result.retry
        assert "Unauthorized" in result.error
        await r.sim.settle()
        assert r.sim.calls == 1 and r.sim.updates == 0 and r.sim.quantities == {}
        with pytest.raises(AmazonError) as refused:
            await r.connector.fetch("114-0000001-0007919")
        assert not refused.value.retry


async def test_invalid_submission_and_unknown_listing_are_not_retried() -> None:
    async with rig() as r:
        ghost, unknown = await r.connector.push([Push("GHOST", 4), Push("NOPE", 4)])
        assert not ghost.ok and not ghost.retry and ghost.error.startswith("INVALID")
        assert not unknown.ok and not unknown.retry
        assert r.sim.calls == 1 and r.sim.updates == 0  # the unknown SKU costs no call


async def test_http_deliveries_are_never_authentic() -> None:
    async with rig() as r:
        body = json.dumps({"NotificationType": "ORDER_CHANGE"}).encode()
        with pytest.raises(SignatureError):
            r.connector.verify({"content-type": "application/json"}, body, "https://x/amazon")
        assert r.sim.calls == 0 and r.sim.orders == []


# -- rate limits -------------------------------------------------------------------------


async def test_connector_paces_itself_under_the_documented_limit() -> None:
    async with rig() as r:
        started = time.monotonic()
        await stock(r, {i: i + 1 for i in range(9)})
        elapsed = time.monotonic() - started
        assert r.sim.throttled == 0
        assert elapsed >= (9 - 5) / 5.0  # burst 5, then at most 5/s
        assert r.sim.quantities == expected({i: i + 1 for i in range(9)})


async def test_connector_honours_429_retry_after() -> None:
    async with rig(sim_options={"rate_per_s": 4, "burst": 1}) as r:
        started = time.monotonic()
        # Backoff alone (5 attempts from 10 ms) would give up before the platform refills.
        await stock(r, {i: 9 for i in range(3)})
        assert r.sim.throttled >= 1
        assert time.monotonic() - started >= 0.5  # the platform admits 1, then 4/s
        assert r.sim.quantities == expected({i: 9 for i in range(3)})


async def test_429_shape_and_retry_after_option() -> None:
    for retry_after in (True, False):
        options = {"rate_per_s": 0.5, "burst": 1, "retry_after_on_429": retry_after}
        async with rig(sim_options=options) as r:
            url = f"{r.url}/listings/2021-08-01/items/{SELLER}/AMZ%2F0%20x"
            body = {"productType": "LUGGAGE", "patches": [r.connector._patch_body(1)]}
            send = {"params": {"marketplaceIds": MARKET}, "json": body,
                    "headers": {"x-amz-access-token": TOKEN}}  # fmt: skip
            assert (await r.http.patch(url, **send)).status_code == 200
            throttled = await r.http.patch(url, **send)
            assert throttled.status_code == 429
            assert throttled.json() == {"errors": [{"code": "QuotaExceeded",
                "message": "You exceeded your quota for the requested resource."}]}  # fmt: skip
            assert throttled.headers["x-amzn-RateLimit-Limit"] == "0.5"
            assert throttled.headers["x-amzn-RequestId"]
            assert ("retry-after" in throttled.headers) is retry_after
            if retry_after:
                assert 1.0 < float(throttled.headers["retry-after"]) <= 2.0


async def test_backoff_without_retry_after_still_converges() -> None:
    sim_options = {"rate_per_s": 10, "burst": 1, "retry_after_on_429": False}
    async with rig(sim_options=sim_options, options={"retry_attempts": 20}) as r:
        await stock(r, {i: 4 for i in range(5)})
        assert r.sim.throttled >= 1
        assert r.sim.quantities == expected({i: 4 for i in range(5)})


# -- faults ------------------------------------------------------------------------------


async def test_5xx_is_retried_then_given_up_as_transient() -> None:
    async with rig(options={"retry_attempts": 3}) as r:
        await r.http.post(f"{r.url}/_sim/faults", json={"error_rate": 1.0})
        [result] = await r.connector.push(pushes({0: 5}))
        assert not result.ok and result.retry
        assert r.sim.calls == 3 and r.sim.updates == 0


async def test_5xx_retries_converge() -> None:
    fast = {"retry_attempts": 40, "rate_per_s": 1000, "burst": 20}
    async with rig(options=fast, limits=False) as r:
        await r.http.post(f"{r.url}/_sim/faults", json={"error_rate": 0.5})
        await stock(r, {i: 30 + i for i in range(20)})
        assert r.sim.calls > 20  # some calls were answered 503 and retried
        assert r.sim.quantities == expected({i: 30 + i for i in range(20)})


async def test_timeouts_are_retried() -> None:
    async with rig(options={"retry_attempts": 2}, timeout_s=0.1) as r:
        await r.http.post(
            f"{r.url}/_sim/faults", json={"timeout_rate": 1.0, "timeout_s": 0.3}, timeout=5.0
        )
        [result] = await r.connector.push(pushes({0: 5}))
        assert not result.ok and result.retry
        assert r.sim.calls == 2
        await r.http.post(f"{r.url}/_sim/faults", json={}, timeout=5.0)
        await stock(r, {0: 6})
        assert r.sim.quantities == {"SKU-0": 6}


# -- outbound: JSON_LISTINGS_FEED --------------------------------------------------------


async def test_batches_over_the_threshold_go_by_feed() -> None:
    async with rig(options={"feed_threshold": 5}) as r:
        await stock(r, {i: 100 + i for i in range(8)})
        assert len(r.sim.feeds) == 1 and r.sim.operations["patchListingsItem"] == 0
        assert r.sim.operations["createFeed"] == 1 and r.sim.operations["getFeed"] >= 1
        assert r.sim.quantities == expected({i: 100 + i for i in range(8)})
        await stock(r, {i: 200 + i for i in range(5)})  # not over the threshold
        assert len(r.sim.feeds) == 1 and r.sim.operations["patchListingsItem"] == 5
        assert r.sim.quantities == expected({i: 200 + i if i < 5 else 100 + i for i in range(8)})
        assert r.sim.throttled == 0


async def test_feed_reports_invalid_messages_per_sku() -> None:
    async with rig(options={"feed_threshold": 2}) as r:
        results = await r.connector.push([*pushes({0: 1, 1: 2}), Push("GHOST", 3)])
        assert [x.ok for x in results] == [True, True, False]
        assert not results[2].retry and "4000001" in results[2].error
        assert r.sim.operations["patchListingsItem"] == 0
        assert r.sim.quantities == expected({0: 1, 1: 2})


async def test_feed_waits_for_a_createfeed_token_else_patches() -> None:
    plans = {"usage_plans": {"createFeed": [0.0001, 1]}}
    async with rig(options={"feed_threshold": 3, **plans}) as r:
        await stock(r, {i: 1 for i in range(4)})
        await stock(r, {i: 2 for i in range(4)})
        assert len(r.sim.feeds) == 1 and r.sim.operations["patchListingsItem"] == 4
        assert r.sim.quantities == expected({i: 2 for i in range(4)})


async def test_feed_failure_is_transient() -> None:
    async with rig(options={"feed_threshold": 2, "retry_attempts": 2}) as r:
        await r.http.post(f"{r.url}/_sim/faults", json={"error_rate": 1.0})
        results = await r.connector.push(pushes({0: 1, 1: 2, 2: 3}))
        assert all(not x.ok and x.retry for x in results)
        assert r.sim.operations["createFeedDocument"] == 2 and not r.sim.feeds


# -- inbound: the SQS queue and the Orders API ------------------------------------------


async def test_notification_has_the_documented_shape() -> None:
    async with rig() as r:
        await stock(r, {1: 5})
        order_id = await order(r, "SKU-1", 2)
        answer = await r.http.post(f"{r.url}/_sqs/receive", json={"MaxNumberOfMessages": 10})
        [message] = answer.json()["Messages"]
        assert message["MessageId"] and message["ReceiptHandle"]
        note = json.loads(message["Body"])
        assert set(note) == {"NotificationVersion", "NotificationType", "PayloadVersion",
                             "EventTime", "Payload", "NotificationMetadata"}  # fmt: skip
        assert note["NotificationType"] == "ORDER_CHANGE" and note["PayloadVersion"] == "1.0"
        change = note["Payload"]["OrderChangeNotification"]
        assert change["AmazonOrderId"] == order_id and change["SellerId"] == SELLER
        assert change["OrderChangeType"] == "OrderStatusChange"
        assert change["Summary"]["OrderStatus"] == "Unshipped"
        [item] = change["Summary"]["OrderItems"]
        assert item["SellerSKU"] == "AMZ/1 x" and item["Quantity"] == 2
        assert set(note["NotificationMetadata"]) == {
            "ApplicationId", "SubscriptionId", "PublishTime", "NotificationId"}  # fmt: skip
        delivery = parse_notification(message["Body"])
        assert delivery.delivery_id == note["NotificationMetadata"]["NotificationId"]
        assert delivery.occurred_ms == parse_ms(note["EventTime"])
        assert r.sim.quantities["SKU-1"] == 3


async def test_receive_fetch_ack() -> None:
    async with rig() as r:
        await stock(r, {1: 5})
        order_id = await order(r, "SKU-1", 2)
        [(delivery, handle)] = await r.connector.receive()
        assert delivery.fetch == (order_id,) and delivery.events == ()
        [event] = await r.connector.fetch(order_id)
        sale = r.sim.sales[order_id]
        assert event.kind is EventKind.CREATED and event.order_id == order_id
        assert event.lines == (OrderLine(line_id=sale.item_id, sku="SKU-1", qty=2),)
        assert event.occurred_ms == sale.updated_ms == delivery.occurred_ms
        await r.connector.ack([handle])
        assert r.sim.queue == [] and await r.connector.receive() == []


async def test_unacked_messages_come_back_after_the_visibility_timeout() -> None:
    async with rig(sim_options={"visibility_timeout_s": 0.2}) as r:
        await stock(r, {1: 5})
        await order(r, "SKU-1", 1)
        [(first, old_handle)] = await r.connector.receive()
        assert await r.connector.receive() == []  # invisible while we work on it
        await asyncio.sleep(0.25)
        [(again, handle)] = await r.connector.receive()
        assert again.delivery_id == first.delivery_id and handle != old_handle
        await r.connector.ack([handle])
        await asyncio.sleep(0.25)
        assert await r.connector.receive() == []


async def test_receive_long_polls() -> None:
    async with rig(options={"wait_s": 2}) as r:
        await stock(r, {1: 5})
        started = time.monotonic()
        waiting = asyncio.create_task(r.connector.receive())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        order_id = await order(r, "SKU-1", 1)
        [(delivery, _)] = await waiting
        assert delivery.fetch == (order_id,)
        assert time.monotonic() - started < 1.5


async def test_duplicate_notification_keeps_its_id() -> None:
    async with rig(duplicate_rate=1.0) as r:
        await stock(r, {1: 5})
        await order(r, "SKU-1", 1)
        [(a, handle_a), (b, handle_b)] = await r.connector.receive()
        assert a.delivery_id == b.delivery_id and a.fetch == b.fetch
        assert handle_a != handle_b


async def test_out_of_order_notifications_converge_on_fetch() -> None:
    async with rig(sim_options={"reorder": True}) as r:
        await stock(r, {2: 5})
        order_id = await order(r, "SKU-2", 3)
        cancel = await r.http.post(f"{r.url}/_sim/orders/{order_id}/cancel")
        assert cancel.status_code == 200
        [(late, _), (early, _)] = await r.connector.receive()
        assert late.occurred_ms > early.occurred_ms  # the cancel arrived first
        for delivery in (late, early):
            [event] = await r.connector.fetch(delivery.fetch[0])
            assert event.kind is EventKind.CANCELLED and event.occurred_ms == late.occurred_ms
            assert [(x.sku, x.qty) for x in event.lines] == [("SKU-2", 3)]


async def test_cancel_route_errors() -> None:
    async with rig() as r:
        await stock(r, {1: 5})
        order_id = await order(r, "SKU-1", 1)
        assert (await r.http.post(f"{r.url}/_sim/orders/{order_id}/cancel")).status_code == 200
        assert (await r.http.post(f"{r.url}/_sim/orders/{order_id}/cancel")).status_code == 409
        assert (await r.http.post(f"{r.url}/_sim/orders/nope/cancel")).status_code == 404


async def test_unreadable_messages_are_left_for_the_dead_letter_queue() -> None:
    async with rig() as r:
        r.sim.queue.append(Message("m-1", "not json"))
        other = {"NotificationType": "ANY_OFFER_CHANGED", "EventTime": "2026-01-01T00:00:00.000Z",
                 "NotificationMetadata": {"NotificationId": "n-2"}}  # fmt: skip
        r.sim.queue.append(Message("m-2", json.dumps(other)))
        [(delivery, _)] = await r.connector.receive()
        assert delivery.delivery_id == "n-2" and delivery.fetch == ()


async def test_poll_pages_through_orders_changed_since() -> None:
    async with rig(sim_options={"page_size": 2}) as r:
        await stock(r, {1: 10, 2: 10})
        first = await order(r, "SKU-1", 1)
        await asyncio.sleep(0.01)
        since_ms = now_ms()
        await asyncio.sleep(0.01)
        second = await order(r, "SKU-2", 2)
        third = await order(r, "SKU-1", 3)
        await r.http.post(f"{r.url}/_sim/orders/{first}/cancel")
        everything = await r.connector.poll(0)
        assert sorted((e.order_id, e.kind) for e in everything) == sorted(
            [(first, EventKind.CANCELLED), (second, EventKind.CREATED), (third, EventKind.CREATED)]
        )
        recent = await r.connector.poll(since_ms)
        assert {e.order_id for e in recent} == {first, second, third}
        assert {e.order_id for e in await r.connector.poll(now_ms() + 1000)} == set()
        assert r.sim.operations["getOrders"] >= 2 and r.sim.throttled == 0


async def test_poll_skips_orders_from_before_since() -> None:
    async with rig() as r:
        await stock(r, {1: 10})
        await order(r, "SKU-1", 1)
        await asyncio.sleep(0.01)
        since_ms = now_ms()
        await asyncio.sleep(0.01)
        later = await order(r, "SKU-1", 2)
        assert [e.order_id for e in await r.connector.poll(since_ms)] == [later]


async def test_fetch_honours_the_orders_usage_plan() -> None:
    plans = {"usage_plans": {"getOrderItems": [20, 30]}}
    async with rig(sim_options={"usage_plans": {"getOrderItems": [5, 1]}}, options=plans) as r:
        await stock(r, {1: 10})
        ids = [await order(r, "SKU-1", 1) for _ in range(3)]
        for order_id in ids:
            [event] = await r.connector.fetch(order_id)
            assert event.kind is EventKind.CREATED
        assert r.sim.throttled >= 1 and r.sim.operations["getOrderItems"] > 3
