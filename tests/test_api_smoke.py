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
