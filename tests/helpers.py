"""Shared setup and readers for the tests."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from engine import Engine, Policy, PolicyKind, keys
from engine.connect import is_empty

OWNED = "stockguard:test-owned"  # marks a database these tests may flush


async def setup_shop(engine: Engine, skus: tuple[str, ...] = ("A", "B", "C")) -> None:
    """Locations wh1, wh2, store; web and amazon sell from wh1 then wh2, pos from store."""
    for location in ("wh1", "wh2", "store"):
        await engine.define_location(location)
    await engine.define_channel("web", ["wh1", "wh2"])
    await engine.define_channel("amazon", ["wh1", "wh2"], Policy(PolicyKind.POOL))
    await engine.define_channel("pos", ["store"])
    for sku in skus:
        await engine.define_sku(sku)


async def outbox_events(client: Any) -> list[dict[str, Any]]:
    """Every event in every partition's outbox, in stream order per partition."""
    events: list[dict[str, Any]] = []
    for p in range(keys.PARTITIONS):
        for _, fields in await client.xrange(keys.outbox(p)):
            events.extend(msgspec.json.decode(fields["events"]))
    return events


async def claim_database(client: Any, url: str) -> None:
    """Refuse to flush a database that holds data these tests did not put there."""
    if not await client.exists(OWNED) and not await is_empty(client):
        pytest.exit(f"{url} is not empty and not owned by the tests; point REDIS_URL elsewhere")
    await client.flushdb()
    await client.set(OWNED, "1")


async def moves_of(client: Any, *kinds: str) -> list[dict[str, Any]]:
    """The moves in every outbox, of the given kinds (all kinds when none are given)."""
    return [
        e
        for e in await outbox_events(client)
        if e["type"] == "move" and (not kinds or e["kind"] in kinds)
    ]


async def sell(shop: Engine, sku: str = "A") -> Engine:
    """5 on hand at wh1, 3 of them committed to order-1."""
    await shop.receive(sku, "wh1", 5)
    hold = await shop.hold("web", {sku: 3}, ttl_ms=60_000)
    await shop.confirm(hold.id, reference="order-1")
    return shop


class Api:
    """The ASGI app with its lifespan running, an httpx client on it, and a key per role.

    `http` sends the operator key; pass `headers=api.auth(role)` to call as another role.
    """

    def __init__(self, app: Any, http: Any, keys: dict[str, str]) -> None:
        self.app, self.http, self.keys = app, http, keys

    @property
    def engine(self) -> Engine:
        return self.app.state.engine  # type: ignore[no-any-return]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


PROBLEM = "application/problem+json"


def _visible(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outbox without the audit pair (placed, rejected) that a hold refused part-way
    leaves behind: a rejected hold never held anything a caller could see."""
    rejected = {e["hold"]["id"] for e in events if e["type"] == "hold" and e["event"] == "rejected"}
    return [e for e in events if e["type"] != "hold" or e["hold"]["id"] not in rejected]


async def snapshot(api: Api) -> dict[str, Any]:
    """Everything a refused request must leave alone."""
    http = api.http
    stock = {sku: (await http.get(f"/v1/stock/{sku}")).json() for sku in ("A", "B", "C")}
    return {
        "stock": stock,
        "catalog": (await http.get("/v1/catalog")).json(),
        "outbox": _visible(await outbox_events(api.engine.client)),
    }


def problem(r: httpx.Response, status: int, name: str, **data: Any) -> dict[str, Any]:
    """Asserts r is the problem `name` with `status` and the given data; returns its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body: dict[str, Any] = r.json()
    assert body["type"].rsplit("/", 1)[1] == name, body
    assert body["status"] == status
    assert body["title"] and body["detail"], body  # something a person can act on
    assert body["request_id"] == r.headers["x-request-id"]
    for key, value in data.items():
        assert body.get(key) == value, (key, body)
    return body


def receiver(connector: Any, received: list[Any]) -> Any:
    """A channel's webhook endpoint in miniature: verify, then keep what was delivered."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from engine.channels.base import BadDelivery, SignatureError

    async def hook(request: Request) -> Response:
        try:
            received.append(connector.verify(request.headers, await request.body(), ""))
        except SignatureError:
            return Response(status_code=401)
        except BadDelivery:
            return Response(status_code=400)
        return Response(status_code=200)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])
