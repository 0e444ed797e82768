"""The Idempotency-Key over HTTP: a replay returns the first response (refusals too) and
changes nothing; the same key with another request is a conflict."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import PROBLEM, Api, outbox_events, problem, snapshot

LINE = {"sku": "A", "qty": 1}
RECEIVE = {"location": "wh1", "qty": 1}


async def test_a_replay_with_the_same_body_returns_the_first_response_once(api_shop: Api) -> None:
    http = api_shop.http
    await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5})
    headers = {**api_shop.auth("checkout"), "Idempotency-Key": "order-1001-hold"}
    body = {"channel": "web", "lines": [{"sku": "A", "qty": 2}], "ttl_ms": 60_000}
    first = await http.post("/v1/holds", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    after_first = await snapshot(api_shop)

    again = await http.post("/v1/holds", json=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert await snapshot(api_shop) == after_first
    placed = [e for e in await outbox_events(api_shop.engine.client) if e.get("event") == "placed"]
    assert [e["hold"]["id"] for e in placed] == [first.json()["id"]]
    stock = (await http.get("/v1/stock/A")).json()
    assert {row["location"]: row["held"] for row in stock["locations"]}["wh1"] == 2


async def test_a_replayed_move_is_applied_once(api_shop: Api) -> None:
    http = api_shop.http
    headers = {"Idempotency-Key": "asn-77"}
    first = await http.post(
        "/v1/stock/A/receive", json={"location": "wh1", "qty": 5}, headers=headers
    )
    assert first.status_code == 200 and first.json()["on_hand"] == 5
    again = await http.post(
        "/v1/stock/A/receive", json={"location": "wh1", "qty": 5}, headers=headers
    )
    assert (again.status_code, again.content) == (200, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    moves = [e for e in await outbox_events(api_shop.engine.client) if e["type"] == "move"]
    assert [(m["kind"], m["sku"], m["qty"]) for m in moves] == [("receive", "A", 5)]


async def test_a_replayed_refusal_is_the_same_refusal(api_shop: Api) -> None:
    http = api_shop.http
    headers = {**api_shop.auth("checkout"), "Idempotency-Key": "too-many"}
    body = {"channel": "web", "lines": [{"sku": "A", "qty": 3}]}
    first = await http.post("/v1/holds", json=body, headers=headers)
    problem(first, 409, "insufficient-stock", sku="A", requested=3, available=0)
    await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5})
    before = await snapshot(api_shop)
    again = await http.post("/v1/holds", json=body, headers=headers)
    assert (again.status_code, again.content) == (409, first.content)
    assert again.headers["content-type"].startswith(PROBLEM)
    assert again.headers["idempotent-replayed"] == "true"
    assert await snapshot(api_shop) == before  # the stock that arrived since is not held


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/holds", {"channel": "web", "lines": [{"sku": "A", "qty": 3}]}),
        ("POST", "/v1/holds", {"channel": "amazon", "lines": [{"sku": "A", "qty": 2}]}),
        ("POST", "/v1/stock/A/receive", {"location": "wh1", "qty": 2}),
        ("PUT", "/v1/skus/A", {"buffer": 1}),
    ],
    ids=["other-qty", "other-channel", "other-path", "other-method"],
)
async def test_a_replay_with_a_different_request_is_a_conflict(
    api_shop: Api, method: str, path: str, body: dict[str, Any]
) -> None:
    http = api_shop.http
    await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5})
    headers = {"Idempotency-Key": "order-1002-hold"}
    first = await http.post("/v1/holds", json={"channel": "web", "lines": [LINE]}, headers=headers)
    assert first.status_code == 201, first.text
    before = await snapshot(api_shop)
    r = await http.request(method, path, json=body, headers=headers)
    problem(r, 409, "idempotency-conflict")
    assert "idempotent-replayed" not in r.headers
    assert await snapshot(api_shop) == before


async def test_a_255_character_idempotency_key_is_accepted(api_shop: Api) -> None:
    """The boundary next to the 300-character refusal above."""
    headers = {"Idempotency-Key": "k" * 255}
    r = await api_shop.http.post("/v1/stock/A/receive", json=RECEIVE, headers=headers)
    assert r.status_code == 200, r.text
