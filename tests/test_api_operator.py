"""Operator calls over HTTP: the catalog, SKU settings, every move, ATS and the moves list."""

from __future__ import annotations

from typing import Any

import httpx
from helpers import Api, moves_of

from engine.writer import Writer

POOL = {"kind": "pool", "qty": 0, "buffer": 0, "since_ms": 0}


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


async def stock(api: Api, sku: str, *channels: str) -> dict[str, Any]:
    params = {"channel": list(channels)} if channels else None
    return ok(await api.http.get(f"/v1/stock/{sku}", params=params))  # type: ignore[no-any-return]


def at(level: dict[str, Any], location: str) -> dict[str, Any]:
    """One location's row of a GET /v1/stock answer."""
    found = [row for row in level["locations"] if row["location"] == location]
    assert len(found) == 1, level
    return found[0]  # type: ignore[no-any-return]


def actor(api: Api, role: str = "operator") -> str:
    """The actor recorded on moves: the key's name and id."""
    key_id = api.keys[role].split("_")[1]
    return f"{role}#{key_id}"


# -- catalog ------------------------------------------------------------------------------


async def test_catalog_is_built_over_http(api: Api) -> None:
    http = api.http
    assert ok(await http.get("/v1/catalog")) == {"version": 0, "locations": {}, "channels": {}}
    versions = []
    for location in ("wh1", "wh2", "store"):
        catalog = ok(await http.put(f"/v1/locations/{location}"))
        assert location in catalog["locations"]
        versions.append(catalog["version"])
    assert versions == sorted(versions) and len(set(versions)) == 3
    again = ok(await http.put("/v1/locations/wh1"))  # defining it again changes nothing
    assert set(again["locations"]) == {"wh1", "wh2", "store"}

    web = ok(await http.put("/v1/channels/web", json={"locations": ["wh1", "wh2"]}))
    assert web["channels"]["web"] == {"name": "web", "locations": ["wh1", "wh2"], "policy": POOL}
    capped = {"kind": "cap", "qty": 3, "buffer": 1}
    ebay = {"locations": ["wh2", "wh1"], "policy": capped}
    catalog = ok(await http.put("/v1/channels/ebay", json=ebay))
    assert catalog["channels"]["ebay"]["policy"].pop("since_ms") > 0  # stamped by the engine
    assert catalog["channels"]["ebay"] == {"name": "ebay", **ebay}
    assert catalog["channels"]["web"] == web["channels"]["web"]  # others are kept
    read = ok(await http.get("/v1/catalog", headers=api.auth("read-only")))
    read["channels"]["ebay"]["policy"].pop("since_ms")
    assert read == catalog

    replaced = ok(await http.put("/v1/channels/web", json={"locations": ["wh2"]}))
    assert replaced["channels"]["web"]["locations"] == ["wh2"]
    assert replaced["version"] > catalog["version"]

    # The catalog is what the engine sells by: web now sells wh2 only, ebay is capped.
    ok(await http.put("/v1/skus/A", json={}))
    ok(await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 10}))
    ok(await http.post("/v1/stock/A/receive", json={"location": "wh2", "qty": 2}))
    assert (await stock(api, "A"))["ats"] == {"ebay": 3 - 1, "web": 2}


# -- SKU settings -------------------------------------------------------------------------


async def test_a_sku_is_defined_and_its_buffer_kept_off_sale(api_shop: Api) -> None:
    http = api_shop.http
    r = await http.post("/v1/stock/D/receive", json={"location": "wh1", "qty": 10})
    assert r.status_code == 404  # not a SKU yet
    assert ok(await http.put("/v1/skus/D", json={})) == {}
    ok(await http.post("/v1/stock/D/receive", json={"location": "wh1", "qty": 10}))
    assert (await stock(api_shop, "D"))["ats"] == {"amazon": 10, "pos": 0, "web": 10}

    assert ok(await http.put("/v1/skus/D", json={"buffer": 3})) == {"buffer": 3}
    level = await stock(api_shop, "D")
    assert level["settings"] == {"buffer": 3}
    assert level["ats"] == {"amazon": 7, "pos": 0, "web": 7}
    assert at(level, "wh1")["on_hand"] == 10  # the buffer is not taken from the shelf
    assert ok(await http.put("/v1/skus/D", json={"buffer": 0})) == {}
    assert (await stock(api_shop, "D"))["ats"]["web"] == 10


async def test_a_channel_policy_is_set_and_removed(api_shop: Api) -> None:
    http = api_shop.http
    ok(await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 10}))
    settings = ok(await http.put("/v1/skus/A/policies/web", json={"kind": "cap", "qty": 3}))
    assert settings["policies"]["web"].pop("since_ms") > 0
    assert settings == {"policies": {"web": {"kind": "cap", "qty": 3, "buffer": 0}}}
    assert (await stock(api_shop, "A"))["ats"] == {"amazon": 10, "pos": 0, "web": 3}
    hold = {"channel": "web", "lines": [{"sku": "A", "qty": 4}]}
    refused = await http.post("/v1/holds", json=hold, headers=api_shop.auth("checkout"))
    assert refused.status_code == 409 and refused.json()["available"] == 3

    settings = ok(await http.put("/v1/skus/A/policies/amazon", json={"buffer": 2}))
    assert settings["policies"]["amazon"] == {"kind": "pool", "qty": 0, "buffer": 2, "since_ms": 0}
    assert (await stock(api_shop, "A"))["ats"] == {"amazon": 8, "pos": 0, "web": 3}

    settings = ok(await http.delete("/v1/skus/A/policies/web"))
    assert settings == {
        "policies": {"amazon": {"kind": "pool", "qty": 0, "buffer": 2, "since_ms": 0}}
    }
    assert (await stock(api_shop, "A"))["ats"] == {"amazon": 8, "pos": 0, "web": 10}
    ok(await http.post("/v1/holds", json=hold, headers=api_shop.auth("checkout")), 201)


async def test_a_buffer_override_is_set_and_removed(api_shop: Api) -> None:
    http = api_shop.http
    ok(await http.put("/v1/skus/A", json={"buffer": 1}))
    ok(await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 8}))
    active = {"start_ms": 0, "end_ms": 10**13, "qty": 5}
    settings = ok(await http.put("/v1/skus/A/override", json=active))
    assert settings == {"buffer": 1, "override": [0, 10**13, 5]}
    assert (await stock(api_shop, "A"))["ats"] == {"amazon": 3, "pos": 0, "web": 3}

    future = {"start_ms": 9 * 10**12, "end_ms": 10**13, "qty": 5}
    settings = ok(await http.put("/v1/skus/A/override", json=future))  # replaces the first
    assert settings["override"] == [9 * 10**12, 10**13, 5]
    assert (await stock(api_shop, "A"))["ats"]["web"] == 7  # not active yet: the buffer is 1

    ok(await http.put("/v1/skus/A/override", json=active))
    assert ok(await http.delete("/v1/skus/A/override")) == {"buffer": 1}
    assert (await stock(api_shop, "A"))["ats"] == {"amazon": 7, "pos": 0, "web": 7}


# -- moves --------------------------------------------------------------------------------


async def test_every_move_over_http(api_shop: Api) -> None:
    api, http = api_shop, api_shop.http

    async def move(verb: str, body: dict[str, Any]) -> dict[str, Any]:
        return ok(await http.post(f"/v1/stock/A/{verb}", json=body))  # type: ignore[no-any-return]

    def row(on_hand: int, committed: int = 0, location: str = "wh1") -> dict[str, Any]:
        available = on_hand - committed
        return {"location": location, "on_hand": on_hand, "committed": committed, "held": 0,
                "available": available}  # fmt: skip

    assert await move("receive", {"location": "wh1", "qty": 10, "reference": "asn-1"}) == row(10)
    assert await move("adjust", {"location": "wh1", "delta": -2, "reason": "broken"}) == row(8)
    assert await move("count", {"location": "wh1", "counted": 7}) == row(7)
    checkout = api.auth("checkout")
    hold = ok(
        await http.post(
            "/v1/holds",
            json={"channel": "web", "lines": [{"sku": "A", "qty": 3}]},
            headers=checkout,
        ),
        201,
    )
    confirm = {"reference": "order-1"}
    ok(await http.post(f"/v1/holds/{hold['id']}/confirm", json=confirm, headers=checkout))
    assert at(await stock(api, "A"), "wh1") == row(7, committed=3)
    assert await move("ship", {"location": "wh1", "qty": 2, "reference": "order-1"}) == row(5, 1)
    assert await move("cancel", {"location": "wh1", "qty": 1, "reason": "buyer left"}) == row(5)
    assert await move("return", {"location": "wh1", "qty": 2, "reference": "order-1"}) == row(7)
    damaged = {"location": "wh1", "qty": 1, "damaged": True, "reason": "crushed"}
    assert await move("return", damaged) == row(7)  # written off: not back on the shelf
    transfer = {"from_location": "wh1", "to_location": "wh2", "qty": 3}
    assert await move("transfer", transfer) == row(3, location="wh2")  # the destination
    level = await stock(api, "A")
    assert (at(level, "wh1")["on_hand"], at(level, "wh2")["on_hand"]) == (4, 3)
    assert level["ats"] == {"amazon": 7, "pos": 0, "web": 7}

    moves = [
        (m["kind"], m["location"], m["on_hand_delta"], m["committed_delta"])
        for m in await moves_of(api.engine.client)
    ]
    assert moves == [
        ("receive", "wh1", 10, 0),
        ("adjust", "wh1", -2, 0),
        ("count", "wh1", -1, 0),
        ("sale", "wh1", 0, 3),
        ("ship", "wh1", -2, -2),
        ("cancel", "wh1", 0, -1),
        ("return_restock", "wh1", 2, 0),
        ("return_damaged", "wh1", 0, 0),
        ("transfer", "wh1", -3, 0),
        ("transfer", "wh2", 3, 0),
    ]
    recorded = await moves_of(api.engine.client, "receive", "adjust", "sale", "return_damaged")
    assert [(m["actor"], m.get("reason"), m.get("reference")) for m in recorded] == [
        (actor(api), "", "asn-1"),
        (actor(api), "broken", ""),
        (actor(api, "checkout"), None, "order-1"),  # the one who confirmed the sale
        (actor(api), "crushed", ""),
    ]


# -- reads --------------------------------------------------------------------------------


async def test_ats_of_many_skus_for_one_channel(api_shop: Api) -> None:
    http = api_shop.http
    ok(await http.post("/v1/stock/A/receive", json={"location": "wh1", "qty": 5}))
    ok(await http.post("/v1/stock/B/receive", json={"location": "wh2", "qty": 2}))
    ok(await http.post("/v1/stock/C/receive", json={"location": "store", "qty": 4}))
    hold = {"channel": "web", "lines": [{"sku": "A", "qty": 1}]}
    ok(await http.post("/v1/holds", json=hold), 201)
    read_only = api_shop.auth("read-only")

    r = await http.get("/v1/channels/web/ats?sku=A&sku=B&sku=C", headers=read_only)
    assert ok(r) == {"channel": "web", "ats": {"A": 4, "B": 2, "C": 0}}
    r = await http.get("/v1/channels/pos/ats", params={"sku": ["A", "C"]}, headers=read_only)
    assert ok(r) == {"channel": "pos", "ats": {"A": 0, "C": 4}}
    r = await http.get("/v1/channels/web/ats", params={"sku": ["B", "NOT-A-SKU"]})
    assert ok(r) == {"channel": "web", "ats": {"B": 2}}  # unknown SKUs are left out
    assert ok(await http.get("/v1/channels/amazon/ats")) == {"channel": "amazon", "ats": {}}


async def test_stock_for_the_channels_asked_about(api_shop: Api) -> None:
    http = api_shop.http
    ok(await http.post("/v1/stock/A/receive", json={"location": "wh2", "qty": 6}))
    ok(await http.post("/v1/stock/A/receive", json={"location": "store", "qty": 1}))
    level = await stock(api_shop, "A", "web", "pos")
    assert level["ats"] == {"web": 6, "pos": 1}
    assert level["sku"] == "A" and at(level, "wh2")["available"] == 6
    assert (await stock(api_shop, "A", "amazon"))["ats"] == {"amazon": 6}
    assert (await stock(api_shop, "A"))["ats"] == {"amazon": 6, "pos": 1, "web": 6}


# -- the moves list -----------------------------------------------------------------------


async def persist(api: Api) -> int:
    """Runs the writer until the outbox is in the ledger; how many entries it wrote."""
    writer = Writer(api.engine.client, api.app.state.store)
    await writer.setup()
    total = 0
    while written := await writer.step():
        total += written
    return total


async def pages(api: Api, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of GET /v1/moves, following `next`."""
    found, after = [], None
    while True:
        query = {**params, **({"after": after} if after else {})}
        page = ok(await api.http.get("/v1/moves", params=query, headers=api.auth("read-only")))
        found.append(page["moves"])
        after = page["next"]
        if after is None:
            return found
        assert len(found) < 100, "the cursor does not advance"


async def test_the_moves_list_pages_and_filters(api_shop: Api) -> None:
    api, http = api_shop, api_shop.http
    assert ok(await http.get("/v1/moves")) == {"moves": [], "next": None}
    for sku, location, qty in (
        ("A", "wh1", 5),
        ("B", "wh1", 3),
        ("A", "wh2", 2),
        ("C", "store", 1),
    ):
        ok(await http.post(f"/v1/stock/{sku}/receive", json={"location": location, "qty": qty}))
    transfer = {"from_location": "wh1", "to_location": "wh2", "qty": 2}
    ok(await http.post("/v1/stock/A/transfer", json=transfer))
    ok(
        await http.post(
            "/v1/stock/B/adjust", json={"location": "wh1", "delta": 4, "reason": "found"}
        )
    )
    assert ok(await http.get("/v1/moves")) == {"moves": [], "next": None}  # not persisted yet
    assert await persist(api) > 0

    everything = ok(await http.get("/v1/moves", params={"limit": 1000}))
    assert everything["next"] is None
    moves = everything["moves"]
    assert len(moves) == 7 == len(await moves_of(api.engine.client))
    order = [(m["at_ms"], m["pos"], m["id"]) for m in moves]
    assert order == sorted(order)  # commit order (per partition; ties broken by id)

    paged = await pages(api, limit=2)
    assert [len(page) for page in paged] == [2, 2, 2, 1]
    assert [m for page in paged for m in page] == moves  # each once, in order

    assert await pages(api, limit=7) == [moves]  # a full last page has no next
    by_sku = [m for page in await pages(api, sku="A", limit=1) for m in page]
    assert by_sku == [m for m in moves if m["sku"] == "A"] and len(by_sku) == 4
    by_location = [m for page in await pages(api, location="wh2", limit=2) for m in page]
    assert by_location == [m for m in moves if m["location"] == "wh2"] and len(by_location) == 2
    transfers = [m for page in await pages(api, kind="transfer") for m in page]
    assert [(m["location"], m["on_hand_delta"]) for m in transfers] == [("wh1", -2), ("wh2", 2)]
    both = ok(await http.get("/v1/moves", params={"sku": "B", "kind": "adjust"}))["moves"]
    assert [(m["sku"], m["qty"], m["reason"], m["actor"]) for m in both] == [
        ("B", 4, "found", actor(api))
    ]
    assert ok(await http.get("/v1/moves", params={"sku": "C", "kind": "ship"}))["moves"] == []
