"""Shopify simulator (channel-apis.md §1): GraphQL inventorySetQuantities with
compare-and-swap and @idempotent replay, the levels query, the legacy REST blind set, the
calculated-cost leaky bucket, and a storefront that sends signed order webhooks.

Platform routes:
  POST /admin/api/{version}/graphql.json               inventorySetQuantities; nodes(ids:)
  POST /admin/api/{version}/inventory_levels/set.json  REST set, no compare, no key
Control routes (besides the base ones):
  POST /_sim/orders/{order_id}/cancel  {"reason": "customer", "restock": true}  orders/cancelled
  POST /_sim/orders/{order_id}/refund  {"qty": n, "restock": bool}             refunds/create

options (the connector's names): client_secret (signs webhooks), signing_secret (signs
instead, to test a rotation), access_token (checked when set), shop_domain, api_version,
bucket_points, restore_per_s, mutation_cost, query_cost, cost_per_item; simulator only:
throttle_status 429 (200 is also reported [U]), rest_rate_per_s 2, rest_bucket 40.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..shopify import API_VERSION, BUCKET_POINTS, RESTORE_PER_S, call_cost, hmac_b64
from .base import Delivery, Order, Simulator, now_ms

# 8 retries over 4 hours with exponential backoff, scaled down to about 2.5 s
RETRY_DELAYS_S = tuple(0.01 * 2**n for n in range(8))
SHOP_TZ = timezone(timedelta(hours=-5))  # REST times carry the shop's offset
REASONS = frozenset(
    {"correction", "cycle_count_available", "damaged", "other", "promotion", "received"}
    | {"restock", "shrinkage"}
)  # fmt: skip
IDEMPOTENT = re.compile(r'@idempotent\(\s*key:\s*(?:\$(\w+)|"([^"]*)")\s*\)')
LEVEL_GID = re.compile(r"gid://shopify/InventoryLevel/([^?]+)\?inventory_item_id=(.+)")
ORDER_IDS, LINE_IDS, REFUND_IDS = 6_000_000_000_000, 15_000_000_000_000, 900_000_000_000
UNAUTHORIZED = "[API] Invalid API key or access token (unrecognized login or wrong password)"


class GraphQLError(Exception):
    def __init__(self, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.code = code


def rest_time(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, SHOP_TZ).isoformat(timespec="seconds")


def triggered_at(at_ms: int) -> str:
    """UTC with nanoseconds, as X-Shopify-Triggered-At is sent."""
    seconds = datetime.fromtimestamp(at_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{at_ms % 1000 * 1_000_000:09d}Z"


def retry_after(wait_s: float) -> str:
    """Decimal seconds, rounded up so a client that waits exactly that long gets in."""
    return f"{math.ceil(wait_s * 1000) / 1000:.3f}"


def gid_tail(value: Any) -> str:
    return str(value).rsplit("/", 1)[-1]


def level_of(entry: dict[str, Any]) -> tuple[str, str]:
    """(inventory item id, location id) of one GraphQL quantity."""
    return gid_tail(entry.get("inventoryItemId")), gid_tail(entry.get("locationId"))


def number(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def user_error(code: str, message: str, field: list[str] | None = None) -> dict[str, Any]:
    return {"code": code, "field": field, "message": message}


def set_result(group: dict[str, Any] | None, errors: list[dict[str, Any]]) -> dict[str, Any]:
    payload = {"inventoryAdjustmentGroup": group, "userErrors": errors}
    return {"data": {"inventorySetQuantities": payload}}


async def control_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class ShopifySimulator(Simulator):
    """A Shopify store, as its Admin API and webhooks behave for one app."""

    platform = "shopify"

    RETRY_DELAYS_S = RETRY_DELAYS_S

    def setup(self) -> None:
        self.by_level = {
            (listing.ids["inventory_item_id"], listing.ids["location_id"]): listing
            for listing in self.listings
            if "inventory_item_id" in listing.ids and "location_id" in listing.ids
        }
        self.inventory_items = {item for item, _ in self.by_level}

    def reset(self) -> None:
        super().reset()
        self.idempotent: dict[str, tuple[str, dict[str, Any]]] = {}  # key → (input, result)
        self.rest_orders: dict[str, dict[str, Any]] = {}  # order id → REST Order resource
        self._id_seq = 0

    def option(self, name: str, default: float) -> float:
        return float(self.options.get(name, default))

    def routes(self) -> list[Route]:
        return [
            Route("/admin/api/{version}/graphql.json", self.graphql, methods=["POST"]),
            Route(
                "/admin/api/{version}/inventory_levels/set.json", self.rest_set, methods=["POST"]
            ),
            Route("/_sim/orders/{order_id}/cancel", self.cancel, methods=["POST"]),
            Route("/_sim/orders/{order_id}/refund", self.refund, methods=["POST"]),
        ]

    async def refused(self, request: Request) -> Response | None:
        """Faults first (every platform call counts), then the access token when one is set."""
        if (fault := await self.fault()) is not None:
            return fault
        token = self.options.get("access_token")
        if token and request.headers.get("X-Shopify-Access-Token") != token:
            return JSONResponse({"errors": UNAUTHORIZED}, status_code=401)
        return None

    # -- GraphQL ------------------------------------------------------------------------------

    async def graphql(self, request: Request) -> Response:
        if (refused := await self.refused(request)) is not None:
            return refused
        try:
            body = json.loads(await request.body())
            query, variables = str(body["query"]), body.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"errors": [{"message": "Bad Request"}]}, status_code=400)
        operation, items = self.operation(query, variables)
        cost = call_cost(self.options, operation, items)
        if self.limits_on and cost > self.option("bucket_points", BUCKET_POINTS):
            message = f"Query cost is {cost}, which exceeds the single query max cost limit"
            return self.reply({"errors": [self.error(message, "MAX_COST_EXCEEDED")]}, cost)
        if wait := self.over_limit("graphql", *self.bucket(), cost):
            return self.throttle_reply(cost, wait)
        try:
            if operation == "mutation":
                result = self.set_quantities(query, variables, request.path_params["version"])
            else:
                result = self.levels(variables)
        except GraphQLError as exc:
            result = {"errors": [self.error(str(exc), exc.code)]}
        return self.reply(result, cost)

    @staticmethod
    def operation(query: str, variables: Any) -> tuple[str, int]:
        """Which of the two supported operations this is, and how many items it carries."""
        try:
            if "inventorySetQuantities" in query:
                return "mutation", len(variables["input"]["quantities"])
            return "query", len(variables["ids"])
        except (KeyError, TypeError):
            return ("mutation" if "inventorySetQuantities" in query else "query"), 0

    @staticmethod
    def error(message: str, code: str) -> dict[str, Any]:
        return {"message": message, "extensions": {"code": code}}

    def bucket(self) -> tuple[float, float]:
        restore = self.option("restore_per_s", RESTORE_PER_S)
        return restore, self.option("bucket_points", BUCKET_POINTS)

    def cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        restore, points = self.bucket()
        current = points
        if self.limits_on:
            limiter = self.limiter("graphql", restore, points)
            limiter.try_take(0.0)
            current = limiter.tokens
        status = {
            "maximumAvailable": points,
            "currentlyAvailable": int(current),
            "restoreRate": restore,
        }
        return {
            "cost": {
                "requestedQueryCost": requested,
                "actualQueryCost": actual,
                "throttleStatus": status,
            }
        }

    def reply(self, result: dict[str, Any], cost: float) -> Response:
        actual = cost if "data" in result else None
        return JSONResponse({**result, "extensions": self.cost(cost, actual)})

    def throttle_reply(self, cost: float, wait_s: float) -> Response:
        documentation = "https://shopify.dev/api/usage/rate-limits"
        error = {
            "message": "Throttled",
            "extensions": {"code": "THROTTLED", "documentation": documentation},
        }
        body = {"errors": [error], "extensions": self.cost(cost, None)}
        status = int(self.options.get("throttle_status", 429))
        headers = {"Retry-After": retry_after(wait_s)} if status == 429 else {}
        return JSONResponse(body, status_code=status, headers=headers)

    def set_quantities(self, query: str, variables: dict[str, Any], version: str) -> dict[str, Any]:
        """Replays a known key's first result; a reused key with other input is a mismatch."""
        key = self.idempotency_key(query, variables)
        if key is None and version >= "2026-04":
            raise GraphQLError("inventorySetQuantities requires the @idempotent directive")
        data = variables.get("input")
        if not isinstance(data, dict) or not isinstance(data.get("quantities"), list):
            raise GraphQLError("input.quantities is required")
        quantities = data["quantities"]
        if len(quantities) > 250:
            raise GraphQLError(
                "input.quantities holds more than 250 items", "MAX_INPUT_SIZE_EXCEEDED"
            )
        if version >= "2026-04" and any("changeFromQuantity" not in q for q in quantities):
            raise GraphQLError("changeFromQuantity is required on every quantity")
        fingerprint = json.dumps(data, sort_keys=True)
        if key is not None and key in self.idempotent:
            first_input, first_result = self.idempotent[key]
            if first_input == fingerprint:
                return first_result
            message = "The same idempotency key was used with different parameters"
            return set_result(None, [user_error("IDEMPOTENCY_KEY_PARAMETER_MISMATCH", message)])
        result = self.apply(data, quantities)
        if key is not None:
            self.idempotent[key] = (fingerprint, result)
        return result

    @staticmethod
    def idempotency_key(query: str, variables: dict[str, Any]) -> str | None:
        match = IDEMPOTENT.search(query)
        if match is None:
            return None
        key = variables.get(match.group(1)) if match.group(1) else match.group(2)
        return str(key) if key else None

    def apply(self, data: dict[str, Any], quantities: list[Any]) -> dict[str, Any]:
        """All or nothing: any userError leaves every quantity as it was."""
        errors = self.input_errors(data)
        for index, entry in enumerate(quantities):
            if problem := self.quantity_error(entry):
                code, name, message = problem
                errors.append(user_error(code, message, ["input", "quantities", str(index), name]))
        if errors:
            return set_result(None, errors)
        changes = []
        for entry in quantities:
            sku, after = self.by_level[level_of(entry)].sku, entry["quantity"]
            changes.append({"name": data["name"], "delta": after - self.quantities.get(sku, 0),
                            "quantityAfterChange": after})  # fmt: skip
            self.set_quantity(sku, after)
        group = {
            "createdAt": triggered_at(now_ms()), "reason": data["reason"], "changes": changes,
            "referenceDocumentUri": data.get("referenceDocumentUri"),
        }  # fmt: skip
        return set_result(group, [])

    @staticmethod
    def input_errors(data: dict[str, Any]) -> list[dict[str, Any]]:
        errors = []
        if data.get("name") not in ("available", "on_hand"):
            errors.append(user_error("INVALID_NAME", "Invalid quantity name", ["input", "name"]))
        if data.get("reason") not in REASONS:
            errors.append(user_error("INVALID_REASON", "Invalid reason", ["input", "reason"]))
        return errors

    def quantity_error(self, entry: Any) -> tuple[str, str, str] | None:
        """(code, field, message) of the first problem with one quantity, or None."""
        listing = self.by_level.get(level_of(entry)) if isinstance(entry, dict) else None
        if listing is None:
            if isinstance(entry, dict) and level_of(entry)[0] in self.inventory_items:
                return "ITEM_NOT_STOCKED_AT_LOCATION", "locationId", "Not stocked at the location"
            return "INVALID_INVENTORY_ITEM", "inventoryItemId", "The inventory item is not valid"
        value = entry.get("quantity")
        if not isinstance(value, int) or value < 0:
            return "INVALID_QUANTITY_NEGATIVE", "quantity", "The quantity can't be negative"
        if value > 1_000_000_000:
            return "INVALID_QUANTITY_TOO_HIGH", "quantity", "The quantity is too high"
        change_from = entry.get("changeFromQuantity")
        if change_from is not None and change_from != self.quantities.get(listing.sku, 0):
            message = "The changeFromQuantity does not match the current quantity"
            return "CHANGE_FROM_QUANTITY_STALE", "changeFromQuantity", message
        return None

    def levels(self, variables: dict[str, Any]) -> dict[str, Any]:
        ids = variables.get("ids")
        if not isinstance(ids, list):
            raise GraphQLError("ids is required")
        return {"data": {"nodes": [self.level(str(gid)) for gid in ids]}}

    def level(self, gid: str) -> dict[str, Any] | None:
        match = LEVEL_GID.fullmatch(gid)
        listing = self.by_level.get((match.group(2), match.group(1))) if match else None
        if listing is None:
            return None
        current = self.quantities.get(listing.sku, 0)
        return {"id": gid, "quantities": [{"name": "available", "quantity": current}]}

    # -- REST -------------------------------------------------------------------------------

    async def rest_set(self, request: Request) -> Response:
        if (refused := await self.refused(request)) is not None:
            return refused
        rate, burst = self.option("rest_rate_per_s", 2.0), self.option("rest_bucket", 40.0)
        if wait := self.over_limit("rest", rate, burst):
            message = "Exceeded 2 calls per second for api client. Reduce request rates."
            headers = {"Retry-After": retry_after(wait), **self.call_limit()}
            return JSONResponse({"errors": message}, status_code=429, headers=headers)
        try:
            body = json.loads(await request.body())
            level = (str(body["inventory_item_id"]), str(body["location_id"]))
            value = int(body["available"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"errors": {"available": ["is required"]}}, status_code=422)
        listing = self.by_level.get(level)
        if listing is None:
            return JSONResponse({"errors": "Not Found"}, status_code=404)
        self.set_quantity(listing.sku, value)
        return JSONResponse(
            {"inventory_level": self.rest_level(level, value)}, headers=self.call_limit()
        )

    @staticmethod
    def rest_level(level: tuple[str, str], value: int) -> dict[str, Any]:
        item, location = level
        return {
            "inventory_item_id": number(item), "location_id": number(location), "available": value,
            "updated_at": rest_time(now_ms()),
            "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{location}?inventory_item_id={item}",
        }  # fmt: skip

    def call_limit(self) -> dict[str, str]:
        burst = self.option("rest_bucket", 40.0)
        bucket = self.limiters.get("rest")
        used = 0 if bucket is None else math.ceil(burst - max(0.0, bucket.tokens))
        return {"X-Shopify-Shop-Api-Call-Limit": f"{used}/{int(burst)}"}

    # -- storefront -------------------------------------------------------------------------

    def next_order_id(self) -> str:
        return str(ORDER_IDS + int(super().next_order_id()))

    def next_id(self, base: int) -> int:
        self._id_seq += 1
        return base + self._id_seq

    def deliveries(self, order: Order) -> list[Delivery]:
        order.line_id = str(self.next_id(LINE_IDS))  # Shopify numbers the line item
        payload = self.order_payload(order)
        self.rest_orders[order.order_id] = payload
        return self.webhooks("orders/create", payload, order.created_ms)

    def order_payload(self, order: Order) -> dict[str, Any]:
        """The REST Order resource, as orders/create carries it."""
        ids = order.listing.ids
        line = {
            "id": int(order.line_id), "admin_graphql_api_id": f"gid://shopify/LineItem/{order.line_id}",
            "variant_id": number(ids.get("variant_id", ids.get("inventory_item_id", "0"))),
            "product_id": number(ids.get("product_id", "0")), "sku": order.sku, "title": order.sku,
            "variant_title": None, "quantity": order.qty, "current_quantity": order.qty,
            "fulfillable_quantity": order.qty, "fulfillment_service": "manual",
            "fulfillment_status": None, "variant_inventory_management": "shopify",
            "requires_shipping": True, "price": "10.00",
        }  # fmt: skip
        created = rest_time(order.created_ms)
        return {
            "id": int(order.order_id), "admin_graphql_api_id": f"gid://shopify/Order/{order.order_id}",
            "name": f"#{1000 + len(self.orders)}", "cancel_reason": None, "cancelled_at": None,
            "created_at": created, "updated_at": created, "financial_status": "paid",
            "fulfillment_status": None, "location_id": None, "line_items": [line], "refunds": [],
        }  # fmt: skip

    def webhooks(self, topic: str, payload: dict[str, Any], at_ms: int) -> list[Delivery]:
        """One signed delivery per event, with the headers Shopify sends."""
        if not self.webhook_url:
            return []
        body = json.dumps(payload, separators=(",", ":")).encode()
        secret = str(self.options.get("signing_secret") or self.options.get("client_secret", ""))
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": hmac_b64(secret, body),
            "X-Shopify-Shop-Domain": str(self.options.get("shop_domain", "sim.myshopify.com")),
            "X-Shopify-API-Version": str(self.options.get("api_version", API_VERSION)),
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": triggered_at(at_ms),
            "X-Shopify-Event-Id": str(uuid.uuid4()),
        }
        return [Delivery(url=self.webhook_url, body=body, headers=headers)]

    def restock(self, sku: str, qty: int) -> None:
        self.quantities[sku] = self.quantities.get(sku, 0) + qty

    async def cancel(self, request: Request) -> Response:
        order = self.rest_orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"errors": "Not Found"}, status_code=404)
        if order["cancelled_at"]:
            return JSONResponse({"errors": "already cancelled"}, status_code=409)
        body = await control_body(request)
        at_ms = now_ms()
        order.update(cancelled_at=rest_time(at_ms), updated_at=rest_time(at_ms),
                     cancel_reason=str(body.get("reason", "customer")))  # fmt: skip
        if body.get("restock", True):
            for line in order["line_items"]:
                self.restock(line["sku"], line["current_quantity"])
        for delivery in self.webhooks("orders/cancelled", order, at_ms):
            self.send(delivery)
        return JSONResponse(order)

    async def refund(self, request: Request) -> Response:
        order = self.rest_orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"errors": "Not Found"}, status_code=404)
        body = await control_body(request)
        line = order["line_items"][0]
        qty = int(body.get("qty", line["current_quantity"]))
        restock = bool(body.get("restock", True))
        if not 0 < qty <= line["current_quantity"]:
            return JSONResponse({"errors": "nothing left to refund"}, status_code=409)
        line["current_quantity"] -= qty
        at_ms = now_ms()
        refund = self.refund_payload(order, line, qty, restock, at_ms)
        order["refunds"].append(refund)
        order["updated_at"] = rest_time(at_ms)
        if restock:
            self.restock(line["sku"], qty)
        for delivery in self.webhooks("refunds/create", refund, at_ms):
            self.send(delivery)
        return JSONResponse(refund, status_code=201)

    def refund_payload(
        self, order: dict[str, Any], line: dict[str, Any], qty: int, restock: bool, at_ms: int
    ) -> dict[str, Any]:
        """The REST Refund resource, as refunds/create carries it."""
        item = {
            "id": self.next_id(REFUND_IDS), "quantity": qty, "line_item_id": line["id"],
            "location_id": number(self.by_sku[line["sku"]].ids.get("location_id", "0")),
            "restock_type": "return" if restock else "no_restock",
            "line_item": {key: line[key] for key in ("id", "variant_id", "sku", "quantity")},
        }  # fmt: skip
        return {
            "id": self.next_id(REFUND_IDS), "order_id": order["id"], "created_at": rest_time(at_ms),
            "restock": restock, "refund_line_items": [item],
            "transactions": [{"kind": "refund", "amount": "10.00", "status": "success"}],
        }  # fmt: skip
