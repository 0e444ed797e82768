"""Shopify (channel-apis.md §1): order webhooks in; absolute `available` quantities out
through GraphQL `inventorySetQuantities`, with compare-and-swap and idempotency keys.

credentials: client_secret (webhook HMAC), previous_client_secret (optional, while a
             rotation settles), access_token (Admin API)
options:     api_version "2026-04"; shop_domain (if set, only that shop's deliveries);
             bucket_points 1000, restore_per_s 100 (Standard plan; Plus 1000), limit_margin
             0.9; the cost model mutation_cost 10, query_cost 1, cost_per_item 1 (the
             simulator charges the same); stale_retries 3; retry_attempts 5,
             retry_base_s 0.05, retry_cap_s 5.0
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .base import (
    BadDelivery,
    Connector,
    Delivery,
    EventKind,
    OrderEvent,
    OrderLine,
    Platform,
    Push,
    PushResult,
    SignatureError,
)
from .limits import Exhausted, RateLimiter, TokenBucket

API_VERSION = "2026-04"
BUCKET_POINTS = 1000.0
RESTORE_PER_S = 100.0
COSTS = {"mutation_cost": 10.0, "query_cost": 1.0, "cost_per_item": 1.0}

SET_QUANTITIES = """
mutation Set($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup {
      createdAt reason referenceDocumentUri changes { name delta quantityAfterChange }
    }
    userErrors { code field message }
  }
}"""

LEVELS = """
query Levels($ids: [ID!]!) {
  nodes(ids: $ids) {
    ... on InventoryLevel { id quantities(names: ["available"]) { name quantity } }
  }
}"""

STALE = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})
NEW_KEY = frozenset({"IDEMPOTENCY_KEY_PARAMETER_MISMATCH", "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"})
BUSY = frozenset({"IDEMPOTENCY_CONCURRENT_REQUEST"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REQUIRED_HEADERS = (
    "X-Shopify-Topic",
    "X-Shopify-Shop-Domain",
    "X-Shopify-API-Version",
    "X-Shopify-Webhook-Id",
)


def call_cost(options: Mapping[str, Any], kind: str, items: int) -> float:
    """The calculated cost of one call ("mutation" or "query"): the simulator charges it,
    the connector budgets for it."""
    base = float(options.get(f"{kind}_cost", COSTS[f"{kind}_cost"]))
    return base + float(options.get("cost_per_item", COSTS["cost_per_item"])) * items


def level_gid(inventory_item_id: str, location_id: str) -> str:
    return f"gid://shopify/InventoryLevel/{location_id}?inventory_item_id={inventory_item_id}"


def hmac_b64(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- webhooks -------------------------------------------------------------------------------


def signature_ok(body: bytes, given: str, secrets: Sequence[str]) -> bool:
    """Constant-time check against every accepted secret (both, during a rotation)."""
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(hmac_b64(secret, body).encode(), given.encode())
    return ok


def iso_ms(value: Any) -> int:
    """Epoch milliseconds of an ISO-8601 time (Shopify sends offsets, "Z" and nanoseconds)."""
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadDelivery(f"not an ISO-8601 time: {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(milliseconds=1)


def platform_id(value: Any, what: str) -> str:
    """Shopify ids arrive as numbers, strings or gids; the result is the bare id."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise BadDelivery(f"{what}: not an id: {value!r}")
    text = str(value)
    return text.rsplit("/", 1)[-1] if text.startswith("gid://") else text


def quantity(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadDelivery(f"not a quantity: {value!r}")
    return value


def objects(payload: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    items = payload.get(name) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise BadDelivery(f"{name} is not a list of objects")
    return items


def order_line(line_id: Any, sku: Any, qty: Any) -> OrderLine:
    return OrderLine(platform_id(line_id, "line item"), str(sku), quantity(qty))


def order_lines(order: Mapping[str, Any]) -> tuple[OrderLine, ...]:
    """A line per line item with a SKU; custom items (sku null) hold no stock of ours."""
    return tuple(
        order_line(item.get("id"), item["sku"], item.get("quantity"))
        for item in objects(order, "line_items")
        if item.get("sku")
    )


def refund_event(refund: Mapping[str, Any], occurred_ms: int) -> tuple[OrderEvent, ...]:
    """Restocked lines come back; a refund that restocks nothing is reported with restock=False."""
    restocked: list[OrderLine] = []
    kept: list[OrderLine] = []
    for item in objects(refund, "refund_line_items"):
        line_item = item.get("line_item") or {}
        if not isinstance(line_item, dict) or not line_item.get("sku"):
            continue
        line_id = item.get("line_item_id") or line_item.get("id")
        line = order_line(line_id, line_item["sku"], item.get("quantity"))
        restock_type = item.get("restock_type", "return" if refund.get("restock") else "no_restock")
        (kept if restock_type == "no_restock" else restocked).append(line)
    lines = restocked or kept
    if not lines:
        return ()
    order_id = platform_id(refund.get("order_id"), "order")
    refund_id = platform_id(refund.get("id"), "refund")
    event = OrderEvent(
        EventKind.REFUNDED, order_id, tuple(lines), occurred_ms, refund_id, bool(restocked)
    )
    return (event,)


def order_events(
    topic: str, payload: Mapping[str, Any], occurred_ms: int
) -> tuple[OrderEvent, ...]:
    if topic == "refunds/create":
        return refund_event(payload, occurred_ms)
    kind = {"orders/create": EventKind.CREATED, "orders/cancelled": EventKind.CANCELLED}.get(topic)
    if kind is None:
        return ()  # a topic we do not use: acknowledge and ignore
    lines = order_lines(payload)
    if not lines:
        return ()
    return (OrderEvent(kind, platform_id(payload.get("id"), "order"), lines, occurred_ms),)


# -- pushes ---------------------------------------------------------------------------------


@dataclass
class _Item:
    push: Push
    inventory_item_id: str = ""
    location_id: str = ""
    change_from: int | None = None
    result: PushResult | None = None

    def quantity_input(self) -> dict[str, Any]:
        return {
            "inventoryItemId": f"gid://shopify/InventoryItem/{self.inventory_item_id}",
            "locationId": f"gid://shopify/Location/{self.location_id}",
            "quantity": self.push.quantity,
            "changeFromQuantity": self.change_from,
        }

    def settle(self, ok: bool, error: str = "", retry: bool = False) -> None:
        self.result = PushResult(self.push.sku, ok=ok, retry=retry, error=error)


class _Failed(Exception):
    """The whole call failed; `retry` says whether pushing again later may help."""

    def __init__(self, error: str, retry: bool) -> None:
        super().__init__(error)
        self.retry = retry


def batch_key(batch: list[_Item]) -> str:
    """One idempotency key per call, stable across retries of the same logical pushes."""
    keys = [item.push.key for item in batch]
    if len(keys) == 1 and keys[0]:
        return keys[0]
    if all(keys):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "shopify-push:" + "|".join(keys)))
    return str(uuid.uuid4())


def error_index(error: Mapping[str, Any]) -> int | None:
    """The quantity a userError names: field ["input", "quantities", "3", ...] → 3."""
    field = error.get("field") or []
    if "quantities" in field and field.index("quantities") + 1 < len(field):
        text = str(field[field.index("quantities") + 1])
        return int(text) if text.isdigit() else None
    return None


def available(node: Any) -> int | None:
    if not isinstance(node, dict):
        return None
    for entry in node.get("quantities") or []:
        if isinstance(entry, dict) and entry.get("name") == "available":
            return int(entry["quantity"])
    return None


def throttle_wait_s(body: Any) -> float | None:
    """Seconds until the bucket holds the requested cost, from extensions.cost."""
    try:
        cost = body["extensions"]["cost"]
        status = cost["throttleStatus"]
        missing = float(cost["requestedQueryCost"]) - float(status["currentlyAvailable"])
        return max(0.0, missing / float(status["restoreRate"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def is_throttled(body: Any) -> bool:
    errors = body.get("errors") if isinstance(body, dict) else None
    return isinstance(errors, list) and any(
        isinstance(e, dict) and (e.get("extensions") or {}).get("code") == "THROTTLED"
        for e in errors
    )


def throttled_as_429(response: httpx.Response) -> httpx.Response:
    """A THROTTLED body comes with HTTP 200 or 429 ([U]); both become a 429 with
    Retry-After, so send() waits and retries as for any 429."""
    if response.status_code not in (200, 429) or "retry-after" in response.headers:
        return response
    try:
        body = response.json()
    except ValueError:
        return response
    if response.status_code == 200 and not is_throttled(body):
        return response
    wait = throttle_wait_s(body)
    headers = {} if wait is None else {"Retry-After": f"{wait:.3f}"}
    return httpx.Response(429, headers=headers, content=response.content, request=response.request)


class ShopifyConnector(Connector):
    """Shopify's webhooks and GraphQL Admin API, paced by calculated query cost."""

    platform = Platform.SHOPIFY
    max_batch = 250  # input arrays hold at most 250 items

    def make_limiter(self) -> RateLimiter:
        """A bucket in cost points, a margin below the plan's, so it never outruns Shopify's."""
        margin = float(self.config.option("limit_margin", 0.9))
        points = float(self.config.option("bucket_points", BUCKET_POINTS))
        restore = float(self.config.option("restore_per_s", RESTORE_PER_S))
        return TokenBucket(restore * margin, points * margin)

    # -- inbound ------------------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        given = headers.get("X-Shopify-Hmac-Sha256")
        if not given:
            raise SignatureError("X-Shopify-Hmac-Sha256 is missing")
        secrets = [self.config.secret("client_secret")]
        if previous := self.config.secret("previous_client_secret", ""):
            secrets.append(previous)
        if not signature_ok(body, given, secrets):
            raise SignatureError("X-Shopify-Hmac-Sha256 does not match the body")
        topic, shop, webhook_id = self._headers(headers)
        try:
            payload = json.loads(body)
        except ValueError:
            raise BadDelivery("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise BadDelivery("the body is not a JSON object")
        occurred_ms = self._occurred_ms(headers, payload)
        events = order_events(topic, payload, occurred_ms)
        return Delivery(f"{shop}/{webhook_id}", events, occurred_ms=occurred_ms)

    def _headers(self, headers: Mapping[str, str]) -> tuple[str, str, str]:
        """The headers Shopify's own library requires; a delivery for another shop is refused."""
        values = [headers.get(name, "") for name in REQUIRED_HEADERS]
        if missing := [name for name in REQUIRED_HEADERS if not headers.get(name)]:
            raise BadDelivery(f"missing headers: {', '.join(missing)}")
        topic, shop, _, webhook_id = values
        expected = self.config.option("shop_domain", None)
        if expected and shop.lower() != str(expected).lower():
            raise BadDelivery(f"delivery for shop {shop}, not {expected}")
        return topic, shop.lower(), webhook_id

    @staticmethod
    def _occurred_ms(headers: Mapping[str, str], payload: Mapping[str, Any]) -> int:
        if triggered := headers.get("X-Shopify-Triggered-At"):
            return iso_ms(triggered)
        stamp = payload.get("updated_at") or payload.get("created_at")
        return iso_ms(stamp) if stamp else 0

    # -- outbound -----------------------------------------------------------------------------

    async def push(self, pushes: list[Push]) -> list[PushResult]:
        items = [self._item(push) for push in pushes]
        ready = [item for item in items if item.result is None]
        for start in range(0, len(ready), self.max_batch):
            await self._push_batch(ready[start : start + self.max_batch])
        return [
            item.result or PushResult(item.push.sku, ok=False, retry=True, error="not sent")
            for item in items
        ]

    def _item(self, push: Push) -> _Item:
        listing = self.by_sku.get(push.sku)
        ids = listing.ids if listing else {}
        item = _Item(
            push, ids.get("inventory_item_id", ""), ids.get("location_id", ""), push.previous
        )
        if not (item.inventory_item_id and item.location_id):
            item.settle(False, "no Shopify listing (inventory_item_id, location_id) for this SKU")
        return item

    async def _push_batch(self, batch: list[_Item]) -> None:
        """Sets the batch; stale quantities are re-read and set again under a new key,
        because we are the source of truth."""
        key = batch_key(batch)
        pending = batch
        rounds = int(self.config.option("stale_retries", 3)) + 1
        try:
            for _ in range(rounds):
                errors = await self._set(pending, key)
                pending = await self._resolve(pending, errors)
                if not pending:
                    return
                key = str(uuid.uuid4())
        except _Failed as failed:
            for item in pending:
                if item.result is None:
                    item.settle(False, str(failed), failed.retry)
            return
        for item in pending:
            item.settle(False, "changeFromQuantity still stale", retry=True)

    async def _set(self, pending: list[_Item], key: str) -> list[Mapping[str, Any]]:
        variables = {
            "key": key,
            "input": {
                "name": "available",
                "reason": "correction",
                "referenceDocumentUri": f"gid://stockguard/Push/{key}",
                "quantities": [item.quantity_input() for item in pending],
            },
        }
        cost = call_cost(self.config.options, "mutation", len(pending))
        data = await self._graphql(SET_QUANTITIES, variables, cost)
        payload = data.get("inventorySetQuantities")
        if not isinstance(payload, dict):
            raise _Failed("no inventorySetQuantities in the response", retry=False)
        return list(payload.get("userErrors") or [])

    async def _resolve(self, pending: list[_Item], errors: list[Mapping[str, Any]]) -> list[_Item]:
        """Settles what the userErrors decide and returns what to send again (the call is
        all-or-nothing, so the items without an error were not applied either)."""
        if not errors:
            for item in pending:
                item.settle(True)
            return []
        codes = {error.get("code") for error in errors}
        if codes & BUSY:
            raise _Failed("idempotency: a concurrent request holds this key", retry=True)
        stale: list[_Item] = []
        for error in errors:
            if error.get("code") in NEW_KEY:
                continue
            index = error_index(error)
            if index is None or index >= len(pending):
                raise _Failed(f"{error.get('code')}: {error.get('message')}", retry=False)
            if error.get("code") in STALE:
                stale.append(pending[index])
            else:
                pending[index].settle(False, f"{error.get('code')}: {error.get('message')}")
        await self._refresh(stale)
        return [item for item in pending if item.result is None]

    async def _refresh(self, stale: list[_Item]) -> None:
        """Re-reads the current `available` of stale items as their new changeFromQuantity."""
        if not stale:
            return
        ids = [level_gid(item.inventory_item_id, item.location_id) for item in stale]
        data = await self._graphql(
            LEVELS, {"ids": ids}, call_cost(self.config.options, "query", len(ids))
        )
        nodes = data.get("nodes") or []
        for index, item in enumerate(stale):
            current = available(nodes[index] if index < len(nodes) else None)
            if current is None:
                item.settle(False, "ITEM_NOT_STOCKED_AT_LOCATION: no inventory level to read")
            item.change_from = current

    async def _graphql(self, query: str, variables: dict[str, Any], cost: float) -> dict[str, Any]:
        url = f"{self.config.base_url.rstrip('/')}/admin/api/{self.api_version}/graphql.json"
        headers = {"X-Shopify-Access-Token": self.config.secret("access_token")}
        body = {"query": query, "variables": variables}

        async def call() -> httpx.Response:
            await self._spend(cost - 1)  # send() takes the first point
            return throttled_as_429(await self.http.post(url, json=body, headers=headers))

        try:
            response = await self.send(call)
        except Exhausted as exc:
            raise _Failed(f"transient: {exc}", retry=True) from exc
        return self._data(response)

    def _data(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 300:
            raise _Failed(f"HTTP {response.status_code}: {response.text[:200]}", retry=False)
        try:
            body = response.json()
        except ValueError:
            raise _Failed("the response is not JSON", retry=True) from None
        if not isinstance(body, dict):
            raise _Failed("the response is not a JSON object", retry=False)
        self._observe(body)
        if errors := body.get("errors"):
            retry = "INTERNAL_SERVER_ERROR" in json.dumps(errors)
            raise _Failed(f"GraphQL errors: {json.dumps(errors)[:300]}", retry=retry)
        data = body.get("data")
        if not isinstance(data, dict):
            raise _Failed("no data in the response", retry=False)
        return data

    async def _spend(self, points: float) -> None:
        if points > 0:
            await self.limiter.take(min(points, self.limiter.burst))

    def _observe(self, body: Any) -> None:
        """Adopts Shopify's own count when it is lower (other workers share the store bucket)."""
        try:
            current = float(body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"])
        except (KeyError, TypeError, ValueError):
            return
        margin = float(self.config.option("limit_margin", 0.9))
        self.limiter.try_take(0.0)  # brings the bank up to now before comparing
        self.limiter.tokens = min(self.limiter.tokens, current * margin)

    @property
    def api_version(self) -> str:
        return str(self.config.option("api_version", API_VERSION))
