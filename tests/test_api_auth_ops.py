"""Roles and keys, and the operations surface: readiness, metrics, docs and request ids."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
from helpers import Api
from prometheus_client.parser import text_string_to_metric_families

from api import auth
from api.auth import Role, create_key

ROLES = ("checkout", "operator", "read-only")
HOLD = {"channel": "web", "lines": [{"sku": "A", "qty": 1}], "ttl_ms": 60_000}


async def _release_a_hold(api: Api, headers: dict[str, str]) -> httpx.Response:
    hold = await api.http.post("/v1/holds", json=HOLD)  # placed by the operator
    assert hold.status_code == 201, hold.text
    return await api.http.post(f"/v1/holds/{hold.json()['id']}/release", headers=headers)


async def _request(api: Api, name: str, headers: dict[str, str]) -> httpx.Response:
    http = api.http
    if name == "release":
        return await _release_a_hold(api, headers)
    method, path, body = {
        "read stock": ("GET", "/v1/stock/A", None),
        "read moves": ("GET", "/v1/moves", None),
        "whoami": ("GET", "/v1/whoami", None),
        "place hold": ("POST", "/v1/holds", HOLD),
        "receive": ("POST", "/v1/stock/A/receive", {"location": "wh1", "qty": 1}),
        "set buffer": ("PUT", "/v1/skus/A", {"buffer": 1}),
        "add location": ("PUT", "/v1/locations/wh9", None),
    }[name]
    return await http.request(method, path, json=body, headers=headers)


# What each role may do, as auth.Role documents it: checkout = holds + reads,
# operator = everything, read-only = GETs.
MATRIX = {
    "read stock": {"checkout": 200, "operator": 200, "read-only": 200},
    "read moves": {"checkout": 200, "operator": 200, "read-only": 200},
    "whoami": {"checkout": 200, "operator": 200, "read-only": 200},
    "place hold": {"checkout": 201, "operator": 201, "read-only": 403},
    "release": {"checkout": 200, "operator": 200, "read-only": 403},
    "receive": {"checkout": 403, "operator": 200, "read-only": 403},
    "set buffer": {"checkout": 403, "operator": 200, "read-only": 403},
    "add location": {"checkout": 403, "operator": 200, "read-only": 403},
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", MATRIX)
async def test_roles_matrix(api_shop: Api, name: str, role: str) -> None:
    await api_shop.http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5})
    expected = MATRIX[name][role]
    r = await _request(api_shop, name, api_shop.auth(role))
    assert r.status_code == expected, r.text
    if expected == 403:
        allowed = sorted(r for r, status in MATRIX[name].items() if status != 403)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"].endswith("/forbidden")
        assert r.json()["allowed"] == allowed
        assert role in r.json()["detail"]


async def test_the_document_lists_the_same_roles(api: Api) -> None:
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    assert paths["/v1/stock/{sku}"]["get"]["x-roles"] == sorted(ROLES)
    assert paths["/v1/holds"]["post"]["x-roles"] == ["checkout", "operator"]
    assert paths["/v1/holds/{hold_id}/release"]["post"]["x-roles"] == ["checkout", "operator"]
    assert paths["/v1/stock/{sku}/receive"]["post"]["x-roles"] == ["operator"]
    assert paths["/v1/skus/{sku}"]["put"]["x-roles"] == ["operator"]


@pytest.mark.parametrize("role", ROLES)
async def test_whoami_names_the_key(api: Api, role: str) -> None:
    r = await api.http.get("/v1/whoami", headers=api.auth(role))
    key_id = api.keys[role].split("_")[1]
    assert r.json() == {"key_id": key_id, "name": role, "role": role}


# -- keys ---------------------------------------------------------------------------------


async def test_a_revoked_key_stops_working(api_shop: Api) -> None:
    store, keys = api_shop.app.state.store, api_shop.app.state.keys
    key, row = await create_key(store, "ops-2", Role.OPERATOR)
    await keys.load()
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api_shop.http.get("/v1/whoami", headers=headers)).json()["name"] == "ops-2"

    assert await store.revoke_key(row.id, int(time.time() * 1000))
    assert not await store.revoke_key(row.id, int(time.time() * 1000))  # revoked once
    await keys.load()
    for method, path in (("GET", "/v1/whoami"), ("PUT", "/v1/skus/A")):
        r = await api_shop.http.request(method, path, json={}, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["type"].endswith("/unauthorized")
    other = await api_shop.http.get("/v1/whoami")  # other keys are untouched
    assert other.json()["role"] == "operator"


async def test_a_new_key_works_at_once_for_concurrent_first_calls(api: Api) -> None:
    await api.app.state.keys.load()
    key, _ = await create_key(api.app.state.store, "till-10", Role.CHECKOUT)
    headers = {"Authorization": f"Bearer {key}"}
    replies = await asyncio.gather(
        *(api.http.get("/v1/whoami", headers=headers) for _ in range(20))
    )
    assert [r.status_code for r in replies] == [200] * 20


async def test_a_new_key_works_at_once(api: Api) -> None:
    keys = api.app.state.keys
    await keys.load()  # the periodic reload has just run
    key, _ = await create_key(api.app.state.store, "till-9", Role.CHECKOUT)
    r = await api.http.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text


async def test_a_new_key_works_without_a_restart(api: Api) -> None:
    """An unknown key reloads the keys (at most once per _MISS_RELOAD_S): no restart,
    no explicit reload."""
    key, row = await create_key(api.app.state.store, "till-10", Role.CHECKOUT)
    await asyncio.sleep(auth._MISS_RELOAD_S + 0.05)
    r = await api.http.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.json() == {"key_id": row.id, "name": "till-10", "role": "checkout"}
    request = api.http.build_request("POST", "/v1/stock/A/receive", json={})
    del request.headers["authorization"]  # the client's operator key
    request.headers["X-Api-Key"] = key
    r = await api.http.send(request)
    assert r.status_code == 403, r.text  # X-Api-Key works too, with the key's own role


# -- health, metrics, docs ----------------------------------------------------------------


async def test_readyz_reports_every_check_ok(api: Api) -> None:
    request = api.http.build_request("GET", "/readyz")
    del request.headers["authorization"]  # no key needed
    r = await api.http.send(request)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {"redis": "ok", "scripts": "ok", "store": "ok"},
    }
    assert (await api.http.get("/healthz")).json()["status"] == "ok"


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric, by their sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_count_hold_outcomes(api_shop: Api) -> None:
    http, checkout = api_shop.http, api_shop.auth("checkout")
    await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 3})
    placed = [await http.post("/v1/holds", json=HOLD, headers=checkout) for _ in range(2)]
    assert [r.status_code for r in placed] == [201, 201]
    too_many = {**HOLD, "lines": [{"sku": "A", "qty": 2}]}
    assert (await http.post("/v1/holds", json=too_many, headers=checkout)).status_code == 409
    unknown = {**HOLD, "lines": [{"sku": "NOPE", "qty": 1}]}
    assert (await http.post("/v1/holds", json=unknown, headers=checkout)).status_code == 404
    hold_id = placed[0].json()["id"]
    assert (await http.post(f"/v1/holds/{hold_id}/confirm", json={})).status_code == 200
    assert (await http.post(f"/v1/holds/{hold_id}/release")).status_code == 409

    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'stockguard_hold_outcomes_total{action="place",outcome="ok"} 2.0' in r.text
    outcomes = _samples(r.text, "stockguard_hold_outcomes_total")
    assert outcomes == {
        (("action", "place"), ("outcome", "ok")): 2.0,
        (("action", "place"), ("outcome", "insufficient-stock")): 1.0,
        (("action", "place"), ("outcome", "unknown-sku")): 1.0,
        (("action", "confirm"), ("outcome", "ok")): 1.0,
        (("action", "release"), ("outcome", "hold-not-active")): 1.0,
    }
    latency = _samples(r.text, "stockguard_http_request_duration_seconds_count")
    key = (("method", "POST"), ("route", "create_hold"), ("status", "201"))
    assert latency[key] == 2.0
    assert "stockguard_writer_lag_entries" in r.text


async def test_docs_page_and_its_assets_are_served(api: Api) -> None:
    r = await api.http.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/docs/static/swagger-ui-bundle.js">' in r.text
    assert 'url: "/openapi.json"' in r.text
    for asset in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', r.text):
        served = await api.http.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    bundle = await api.http.get("/docs/static/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"]
    assert b"SwaggerUIBundle" in bundle.content
    assert (await api.http.get("/docs/static/no-such-file.js")).status_code == 404


# -- request ids --------------------------------------------------------------------------


async def test_every_response_has_a_request_id(api_shop: Api) -> None:
    http = api_shop.http
    responses = [
        await http.get("/healthz"),
        await http.get("/readyz"),
        await http.get("/metrics"),
        await http.get("/openapi.json"),
        await http.get("/docs"),
        await http.get("/docs/static/swagger-ui.css"),
        await http.get("/v1/stock/A"),
        await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 1}),
        await http.get("/v1/stock/NOPE"),
        await http.get("/v1/nowhere"),
        await http.delete("/v1/holds"),
        await http.post("/v1/holds", content=b"{"),
        await http.get("/v1/whoami", headers={"Authorization": "Bearer forged"}),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), [(r.request.url, r.status_code) for r in responses]
    assert len(set(ids)) == len(ids)  # one per request


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/stock/A", None, 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/v1/stock/NOPE", None, 404),
        ("POST", "/v1/holds", {"channel": "web", "lines": []}, 422),
        ("GET", "/v1/nowhere", None, 404),
    ],
)
async def test_a_given_request_id_is_echoed(
    api_shop: Api, method: str, path: str, body: Any, status: int
) -> None:
    given = "checkout-7f3a:retry.2"
    r = await api_shop.http.request(method, path, json=body, headers={"X-Request-Id": given})
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"] == given
    if status >= 400:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["request_id"] == given


@pytest.mark.parametrize("given", ["has spaces", "x" * 65, "", "ünïcode"])
async def test_an_unusable_request_id_is_replaced(api: Api, given: str) -> None:
    r = await api.http.get("/v1/stock/NOPE", headers={"X-Request-Id": given.encode()})
    assert r.status_code == 404
    own = r.headers["x-request-id"]
    assert own and own != given
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", own)
    assert r.json()["request_id"] == own


async def test_problems_carry_the_request_id(api_shop: Api) -> None:
    http = api_shop.http
    problems = [
        await http.get("/v1/stock/NOPE"),  # an engine refusal
        await http.post("/v1/holds", content=b"{"),  # malformed JSON
        await http.get("/v1/whoami", headers={"Authorization": "Bearer forged"}),  # 401
        await http.post("/v1/stock/A/receive", json={}, headers=api_shop.auth("read-only")),
        await http.get("/v1/nowhere"),  # the router's own 404
        await http.put("/v1/holds"),  # and 405
    ]
    assert [r.status_code for r in problems] == [404, 400, 401, 403, 404, 405]
    for r in problems:
        assert r.json()["request_id"] == r.headers["x-request-id"], r.text


async def test_a_500_carries_the_request_id_too(api_shop: Api, monkeypatch: Any) -> None:
    """A bug (simulated: the engine's catalog read raises) answers a problem with the id in
    the body and in the header, though Starlette sends it outside the request-id middleware."""

    async def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api_shop.engine, "catalog", broken)
    transport = httpx.ASGITransport(app=api_shop.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockguard.test") as http:
        for given in ("trace-500", None):
            headers = {**api_shop.auth("read-only"), **({"X-Request-Id": given} if given else {})}
            r = await http.get("/v1/catalog", headers=headers)
            assert r.status_code == 500
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["type"].endswith("/internal") and "a bug" not in r.text
            assert r.headers["x-request-id"] == body["request_id"] == (given or body["request_id"])
            assert body["request_id"]
