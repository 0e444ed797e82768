"""The API end to end through ASGI: a hold's life, and the operations surface."""

from __future__ import annotations

from helpers import Api


async def test_hold_lifecycle_over_http(api_shop: Api) -> None:
    http = api_shop.http
    r = await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5})
    assert r.status_code == 200, r.text
    assert r.json()["on_hand"] == 5
    checkout = api_shop.auth("checkout")
    body = {"channel": "web", "lines": [{"sku": "A", "qty": 2}], "ttl_ms": 60_000}
    r = await http.post("/v1/holds", json=body, headers=checkout)
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["state"] == "held" and hold["lines"] == [{"sku": "A", "location": "wh1", "qty": 2}]
    r = await http.post(
        f"/v1/holds/{hold['id']}/confirm", json={"reference": "o-1"}, headers=checkout
    )
    assert r.status_code == 200 and r.json()["state"] == "confirmed"
    r = await http.get("/v1/stock/A", headers=api_shop.auth("read-only"))
    by_location = {row["location"]: row for row in r.json()["locations"]}
    assert by_location["wh1"] == {
        "location": "wh1",
        "on_hand": 5,
        "committed": 2,
        "held": 0,
        "available": 3,
    }


async def test_operations_surface(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    spec = (await api.http.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0" and "/v1/holds" in spec["paths"]
    assert "stockguard_http_request_duration_seconds" in (await api.http.get("/metrics")).text


async def test_idempotency_keys_are_scoped_to_the_api_key(api_shop: Api) -> None:
    await api_shop.http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5})
    body = {"channel": "web", "lines": [{"sku": "A", "qty": 1}]}
    headers = {"Idempotency-Key": "cart-1"}
    ids = set()
    for role in ("checkout", "operator", "checkout"):
        r = await api_shop.http.post(
            "/v1/holds", json=body, headers={**headers, **api_shop.auth(role)}
        )
        assert r.status_code == 201, r.text
        ids.add(r.json()["id"])
    assert len(ids) == 2  # one hold per API key; the second checkout call was a replay
    stock = await api_shop.engine.stock("A")
    assert sum(row.held for row in stock.locations) == 2


async def test_names_with_a_slash_are_addressable_in_paths(api_shop: Api) -> None:
    http = api_shop.http
    assert (await http.put("/v1/skus/TEE/RED/M", json={"buffer": 1})).status_code == 200
    r = await http.post("/v1/stock/TEE%2FRED%2FM/receive", json={"location": "wh1", "qty": 4})
    assert r.status_code == 200, r.text
    r = await http.put("/v1/skus/TEE/RED/M/override", json={"start_ms": 0, "end_ms": 1, "qty": 0})
    assert r.status_code == 200, r.text
    stock = (await http.get("/v1/stock/TEE/RED/M")).json()
    assert stock["sku"] == "TEE/RED/M" and stock["settings"]["buffer"] == 1
    assert {row["location"]: row["on_hand"] for row in stock["locations"]}["wh1"] == 4


async def test_a_malformed_channel_filter_is_invalid_input(api_shop: Api) -> None:
    r = await api_shop.http.get("/v1/stock/A", params={"channel": "bad name"})
    assert r.status_code == 422 and r.json()["field"] == "channel", r.text
    r = await api_shop.http.get("/v1/stock/A", params={"channel": "nowhere"})
    assert r.status_code == 404 and r.json()["type"].endswith("/unknown-channel")
