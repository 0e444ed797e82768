"""The generic signed-JSON channel against its simulator, over real HTTP on loopback."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from helpers import receiver

from engine.channels.base import (
    BadDelivery,
    ChannelConfig,
    Delivery,
    EventKind,
    Listing,
    OrderLine,
    Platform,
    Push,
    SignatureError,
)
from engine.channels.sim.base import free_port, serving
from engine.channels.sim.webhook import WebhookSimulator
from engine.channels.webhook import WebhookConnector, batch_key, signature_header

SECRET = "shop-secret"
LISTINGS = [Listing(sku=f"SKU-{n}") for n in range(250)]


def config(base_url: str = "http://shop.invalid", **options: Any) -> ChannelConfig:
    credentials = {"secret": options.pop("secret", SECRET)}
    if "previous_secret" in options:
        credentials["previous_secret"] = options.pop("previous_secret")
    return ChannelConfig(
        channel="shop",
        platform=Platform.WEBHOOK,
        base_url=base_url,
        credentials=credentials,
        options=options,
        listings=tuple(LISTINGS),
    )


@contextlib.asynccontextmanager
async def channel(
    *, limits: bool = False, duplicate_rate: float = 0.0, hook_secret: str = SECRET, **options: Any
) -> AsyncIterator[tuple[WebhookSimulator, WebhookConnector, list[Delivery]]]:
    hook_port = free_port()
    sim = WebhookSimulator(
        LISTINGS,
        webhook_url=f"http://127.0.0.1:{hook_port}/hook",
        limits=limits,
        duplicate_rate=duplicate_rate,
        retry_delays_s=(0.02, 0.02),
        options={"secret": SECRET, **options},
    )
    received: list[Delivery] = []
    async with serving(sim.app()) as base_url, httpx.AsyncClient() as http:
        connector = WebhookConnector(config(base_url, **options), http)
        hook_connector = WebhookConnector(config(secret=hook_secret), http)
        async with serving(receiver(hook_connector, received), hook_port):
            yield sim, connector, received


def signed(
    body: dict[str, Any], secret: str = SECRET, stamp: int | None = None
) -> tuple[dict[str, str], bytes]:
    raw = msgspec.json.encode(body)
    return {"stockguard-signature": signature_header([secret], raw, stamp)}, raw


CREATED = {
    "id": "d-1",
    "type": "order.created",
    "occurred_at_ms": 1_700_000_000_000,
    "order": {"id": 77, "lines": [{"id": 1, "sku": "SKU-1", "qty": 2}]},
}


# -- inbound: verify -------------------------------------------------------------------


def test_verify_reads_a_signed_delivery() -> None:
    headers, body = signed(CREATED)
    delivery = WebhookConnector(config(), httpx.AsyncClient()).verify(headers, body, "")
    assert delivery.delivery_id == "d-1"
    assert delivery.occurred_ms == 1_700_000_000_000
    (event,) = delivery.events
    assert (event.kind, event.order_id, event.occurred_ms) == (
        EventKind.CREATED,
        "77",
        1_700_000_000_000,
    )
    assert event.lines == (OrderLine("1", "SKU-1", 2),)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"stockguard-signature": "t=1,v1=00"},
        signed(CREATED, secret="someone-else")[0],
        signed(CREATED, stamp=int(time.time()) - 600)[0],
        signed(CREATED, stamp=int(time.time()) + 600)[0],
        {"stockguard-signature": signed(CREATED)[0]["stockguard-signature"].split(",v1")[0]},
    ],
    ids=["missing", "garbage", "wrong-secret", "stale", "future", "no-v1"],
)
def test_verify_refuses_bad_signatures(headers: dict[str, str]) -> None:
    body = msgspec.json.encode(CREATED)
    with pytest.raises(SignatureError):
        WebhookConnector(config(), httpx.AsyncClient()).verify(headers, body, "")


def test_verify_refuses_a_body_changed_after_signing() -> None:
    headers, body = signed(CREATED)
    with pytest.raises(SignatureError):
        WebhookConnector(config(), httpx.AsyncClient()).verify(headers, body + b" ", "")


def test_verify_accepts_either_secret_while_rotating() -> None:
    rotating = WebhookConnector(
        config(secret="new-secret", previous_secret=SECRET), httpx.AsyncClient()
    )
    assert rotating.verify(*signed(CREATED), "").delivery_id == "d-1"
    assert rotating.verify(*signed(CREATED, secret="new-secret"), "").delivery_id == "d-1"
    raw = msgspec.json.encode(CREATED)
    both = {"stockguard-signature": signature_header(["unknown", "new-secret"], raw)}
    assert rotating.verify(both, raw, "").delivery_id == "d-1"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        msgspec.json.encode({**CREATED, "type": "order.shipped"}),
        msgspec.json.encode({**CREATED, "occurred_at_ms": "soon"}),
        msgspec.json.encode({**CREATED, "order": {"id": 1, "lines": [{"id": 1, "sku": "A"}]}}),
        msgspec.json.encode(
            {**CREATED, "order": {"id": 1, "lines": [{"id": 1, "sku": "A", "qty": "2"}]}}
        ),
        msgspec.json.encode(
            {**CREATED, "order": {"id": 1, "lines": [{"id": 1, "sku": "A", "qty": 0}]}}
        ),
        msgspec.json.encode({**CREATED, "order": {"id": 1, "lines": []}}),
        msgspec.json.encode({**CREATED, "type": "order.refunded"}),
        msgspec.json.encode({**CREATED, "type": "order.refunded", "refund_id": "r", "restock": 1}),
    ],
    ids=[
        "json",
        "type",
        "time",
        "no-qty",
        "qty-str",
        "qty-0",
        "no-lines",
        "no-refund-id",
        "restock",
    ],
)
def test_verify_refuses_signed_but_unreadable(body: bytes) -> None:
    headers = {"stockguard-signature": signature_header([SECRET], body)}
    with pytest.raises(BadDelivery):
        WebhookConnector(config(), httpx.AsyncClient()).verify(headers, body, "")


def test_verify_reads_refunds_and_whole_order_cancels() -> None:
    connector = WebhookConnector(config(), httpx.AsyncClient())
    refund = {**CREATED, "type": "order.refunded", "refund_id": "r-9", "restock": False}
    (event,) = connector.verify(*signed(refund), "").events
    assert (event.kind, event.refund_id, event.restock) == (EventKind.REFUNDED, "r-9", False)
    cancel = {**CREATED, "type": "order.cancelled", "order": {"id": "77"}}
    (event,) = connector.verify(*signed(cancel), "").events
    assert (event.kind, event.order_id, event.lines) == (EventKind.CANCELLED, "77", ())


# -- inbound: the storefront -------------------------------------------------------------


async def sell(http: httpx.AsyncClient, base_url: str, sku: str, qty: int) -> str:
    response = await http.post(f"{base_url}/_sim/orders", json={"sku": sku, "qty": qty})
    assert response.status_code == 201, response.text
    return str(response.json()["order_id"])


async def test_storefront_orders_cancels_and_refunds_arrive_signed() -> None:
    async with channel() as (sim, connector, received), httpx.AsyncClient() as http:
        base_url = connector.config.base_url
        await connector.push([Push("SKU-1", 5), Push("SKU-2", 5)])
        first = await sell(http, base_url, "SKU-1", 2)
        second = await sell(http, base_url, "SKU-2", 3)
        assert (await http.post(f"{base_url}/_sim/orders/{first}/cancel")).status_code == 200
        assert (await http.post(f"{base_url}/_sim/orders/{first}/cancel")).status_code == 409
        refund_url = f"{base_url}/_sim/orders/{second}/refund"
        assert (await http.post(refund_url, json={"qty": 1, "restock": False})).is_success
        assert (await http.post(refund_url, json={"qty": 3})).status_code == 409
        await sim.idle()
    kinds = {(e.kind, e.order_id): e for d in received for e in d.events}
    created = kinds[(EventKind.CREATED, first)]
    assert created.lines == (OrderLine("1", "SKU-1", 2),)
    assert kinds[(EventKind.CANCELLED, first)].lines == created.lines
    refund = kinds[(EventKind.REFUNDED, second)]
    assert (refund.lines[0].qty, refund.restock, refund.refund_id) == (1, False, "rf_1")
    assert len(received) == 4
    assert len({d.delivery_id for d in received}) == 4
    assert sim.quantities == {"SKU-1": 3, "SKU-2": 2}


async def test_storefront_duplicates_keep_their_delivery_id() -> None:
    async with channel(duplicate_rate=1.0) as (sim, connector, received):
        await connector.push([Push("SKU-1", 5)])
        assert sim.take_order("SKU-1", 1) is not None
        await sim.idle()
    assert len(received) == 2
    assert received[0] == received[1]


async def test_storefront_webhook_with_a_bad_signature_is_refused_and_retried() -> None:
    async with channel(hook_secret="not-the-shops") as (sim, connector, received):
        await connector.push([Push("SKU-1", 5)])
        assert sim.take_order("SKU-1", 1) is not None
        await sim.idle()
    assert received == []
    assert (sim.delivered, sim.failed_deliveries) == (0, 3)


# -- outbound ---------------------------------------------------------------------------


async def test_push_batches_and_converges() -> None:
    async with channel(rate_per_s=0) as (sim, connector, _):
        first = [Push(f"SKU-{n}", n) for n in range(250)]
        results = await connector.push(first)
        assert [r.sku for r in results] == [p.sku for p in first]
        assert all(r.ok for r in results)
        assert sim.calls == 3  # 100 + 100 + 50
        second = [Push(f"SKU-{n}", 1000 - n) for n in range(0, 250, 2)]
        assert all(r.ok for r in await connector.push(second))
        assert sim.calls == 5
    expected = {p.sku: p.quantity for p in [*first, *second]}
    assert sim.quantities == expected


async def test_batch_size_option_splits_calls() -> None:
    async with channel(rate_per_s=0, batch_size=40) as (sim, connector, _):
        assert all(r.ok for r in await connector.push([Push(f"SKU-{n}", 1) for n in range(100)]))
        assert sim.calls == 3


async def test_push_with_a_bad_signature_changes_nothing_and_is_not_retried() -> None:
    async with channel() as (sim, connector, _), httpx.AsyncClient() as http:
        wrong = WebhookConnector(config(connector.config.base_url, secret="wrong"), http)
        (result,) = await wrong.push([Push("SKU-1", 9)])
        stale = {"stockguard-signature": signature_header([SECRET], b"{}", int(time.time()) - 400)}
        answer = await http.post(f"{connector.config.base_url}/inventory", headers=stale)
    assert (result.ok, result.retry) == (False, False)
    assert result.error.startswith("HTTP 401")
    assert answer.status_code == 401
    assert (sim.calls, sim.updates, sim.quantities) == (2, 0, {})


async def test_oversized_batch_is_refused_without_retry() -> None:
    async with channel(batch_size=150, max_batch=100) as (sim, connector, _):
        results = await connector.push([Push(f"SKU-{n}", 1) for n in range(150)])
    assert {(r.ok, r.retry) for r in results} == {(False, False)}
    assert results[0].error.startswith("HTTP 413")
    assert (sim.calls, sim.updates) == (1, 0)


async def test_connector_paces_itself_under_the_limit() -> None:
    async with channel(limits=True, rate_per_s=20, batch_size=1) as (sim, connector, _):
        started = time.monotonic()
        results = await connector.push([Push(f"SKU-{n}", n) for n in range(40)])
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert sim.throttled == 0
    assert elapsed >= (40 - 18) / 18 * 0.9  # burst 18, then 18/s
    assert sim.quantities == {f"SKU-{n}": n for n in range(40)}


async def test_connector_honours_retry_after() -> None:
    sim_options = {"limits": True, "rate_per_s": 5, "batch_size": 1}
    async with channel(**sim_options) as (sim, connector, _), httpx.AsyncClient() as http:
        options = {"rate_per_s": 50, "limit_margin": 1.0, "batch_size": 1, "retry_attempts": 8}
        fast = WebhookConnector(config(connector.config.base_url, **options), http)
        started = time.monotonic()
        results = await fast.push([Push(f"SKU-{n}", n) for n in range(12)])
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results), results
    assert sim.throttled > 0
    assert elapsed >= 1.0  # the first 429 said Retry-After: 1
    assert sim.quantities == {f"SKU-{n}": n for n in range(12)}


async def test_5xx_and_timeouts_are_retried() -> None:
    options = {"retry_attempts": 12, "retry_cap_s": 0.2, "batch_size": 1, "timeout_s": 0.1}
    async with channel(**options) as (sim, connector, _), httpx.AsyncClient() as http:
        await http.post(f"{connector.config.base_url}/_sim/faults", json={"error_rate": 0.5})
        results = await connector.push([Push(f"SKU-{n}", 7) for n in range(10)])
        assert all(r.ok for r in results)
        assert sim.calls > 10
        faults = {"timeout_rate": 1.0, "timeout_s": 0.3}
        await http.post(f"{connector.config.base_url}/_sim/faults", json=faults)
        calls = sim.calls
        options = {"retry_attempts": 2, "timeout_s": 0.05}
        impatient = WebhookConnector(config(connector.config.base_url, **options), http)
        (result,) = await impatient.push([Push("SKU-1", 1)])
    assert (result.ok, result.retry) == (False, True)
    assert sim.calls - calls == 2
    assert sim.quantities == {f"SKU-{n}": 7 for n in range(10)}


async def test_idempotency_key_replays_and_refuses_reuse() -> None:
    async with channel() as (sim, connector, _), httpx.AsyncClient() as http:
        assert (await connector.push([Push("SKU-1", 4, key="k-1")]))[0].ok
        body = msgspec.json.encode({"items": [{"sku": "SKU-1", "quantity": 4}]})
        url = f"{connector.config.base_url}/inventory"
        key = {"idempotency-key": batch_key([Push("SKU-1", 4, key="k-1")])}
        again = await http.post(url, content=body, headers={**key, **sig(body)})
        other = msgspec.json.encode({"items": [{"sku": "SKU-1", "quantity": 5}]})
        reused = await http.post(url, content=other, headers={**key, **sig(other)})
    assert again.json() == {"accepted": 1}
    assert reused.status_code == 422
    assert (sim.updates, sim.quantities) == (1, {"SKU-1": 4})


def sig(body: bytes) -> dict[str, str]:
    return {"stockguard-signature": signature_header([SECRET], body)}
