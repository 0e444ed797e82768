"""Locust scenarios against a running `stockguard serve`: checkout, flash-sale and operator users.

    STOCKGUARD_KEY=sg_... STOCKGUARD_OPERATOR_KEY=sg_... \\
        locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

STOCKGUARD_KEY is the key of the checkout and flash-sale users (a checkout key; an
operator key works too). STOCKGUARD_OPERATOR_KEY (default: STOCKGUARD_KEY) is the
operator users' key, and the one the setup uses when the test starts: locations
load-wh1 and load-wh2; channels load-web (both), load-market (load-wh1, capped at 50%)
and load-pos (load-wh2); SKUs LOAD-00 to LOAD-49 with at least STOCK_PER_LOCATION
available at each location; and the flash sale `load-flash` of LOAD-FLASH on load-web,
running from now on, with exactly FLASH_UNITS available. Every step can run again:
PUTs replace, and the stock moves are only what is missing (or, for the flash sale,
too much), under an Idempotency-Key named after the stock seen, so two setups at once
move it once.

Refusals the API documents as business outcomes (409 insufficient-stock,
limit-exceeded, admission-used, count-below-reserved; 410 admission-expired and
sale-ended; tickets told sold_out) count as successes; anything else that is not the
expected 2xx, 5xx above all, is a failure. Afterwards, `stockguard audit` checks that
nothing was oversold.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections import Counter
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner

LOCATIONS = ("load-wh1", "load-wh2")
CHANNELS = {  # channel -> (locations, default policy), and how often checkouts use it
    "load-web": (LOCATIONS, {"kind": "pool"}),
    "load-market": ((LOCATIONS[0],), {"kind": "cap_pct", "qty": 50}),
    "load-pos": ((LOCATIONS[1],), {"kind": "pool"}),
}
CHANNEL_WEIGHTS = (6, 3, 1)
SKUS = tuple(f"LOAD-{n:02d}" for n in range(50))
SKU_WEIGHTS = tuple(1 / (n + 1) for n in range(len(SKUS)))  # a few best sellers sell out
STOCK_PER_LOCATION = 200
SALE, FLASH_SKU, FLASH_CHANNEL = "load-flash", "LOAD-FLASH", "load-web"
FLASH_UNITS, FLASH_LIMIT = 30, 2  # sells out within a short rehearsal
RUN = uuid.uuid4().hex[:6]  # customers are new in every run: the sale's limits start afresh

log = logging.getLogger("stockguard.loadtest")
OUTCOMES: Counter[str] = Counter()  # documented refusals and final ticket states, by request


def checkout_key() -> str:
    return os.environ.get("STOCKGUARD_KEY", "")


def operator_key() -> str:
    return os.environ.get("STOCKGUARD_OPERATOR_KEY") or checkout_key()


def seg(value: str) -> str:
    """One path segment: names may hold '/', '+' and '#'."""
    return quote(value, safe="")


def idempotency() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


# -- setup, once per run ------------------------------------------------------------------


def _call(http: httpx.Client, method: str, path: str, body: Any = None, **headers: str) -> Any:
    response = http.request(method, path, json=body, headers=headers)
    if response.status_code >= 300:
        raise RuntimeError(f"setup: {method} {path}: {response.status_code} {response.text}")
    return response.json()


def _stock(http: httpx.Client, sku: str, units: int, location: str, *, exact: bool) -> None:
    """Receives what the location lacks of `units` available (and with `exact`, adjusts
    away any more). The Idempotency-Key names the stock seen, so a setup that saw the
    same stock replays the move instead of applying it again."""
    stock = _call(http, "GET", f"/v1/stock/{seg(sku)}")
    row = next((r for r in stock["locations"] if r["location"] == location), None)
    row = row or {"on_hand": 0, "committed": 0, "held": 0, "available": 0}
    missing = units - row["available"]
    if missing == 0 or (missing < 0 and not exact):
        return
    seen = f"{sku}:{location}:{row['on_hand']}.{row['committed']}.{row['held']}"
    body: dict[str, Any] = {"location": location, "reference": f"load-{RUN}"}
    if missing > 0:
        body["qty"] = missing
        verb = "receive"
    else:
        body |= {"delta": missing, "reason": "load test: back to the flash sale's units"}
        verb = "adjust"
    key = {"Idempotency-Key": f"load-setup:{verb}:{seen}"}
    _call(http, "POST", f"/v1/stock/{seg(sku)}/{verb}", body, **key)


def set_up(host: str, key: str) -> None:
    """The catalog, the stock and a running flash sale; each step can run again."""
    auth = {"Authorization": f"Bearer {key}"}
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per setup request
    with httpx.Client(base_url=host, headers=auth, timeout=30) as http:
        for location in LOCATIONS:
            _call(http, "PUT", f"/v1/locations/{seg(location)}")
        for channel, (locations, policy) in CHANNELS.items():
            body = {"locations": list(locations), "policy": policy}
            _call(http, "PUT", f"/v1/channels/{seg(channel)}", body)
        for sku in (*SKUS, FLASH_SKU):
            _call(http, "PUT", f"/v1/skus/{seg(sku)}", {"buffer": 0})
        for sku in SKUS:
            for location in LOCATIONS:
                _stock(http, sku, STOCK_PER_LOCATION, location, exact=False)
        _stock(http, FLASH_SKU, FLASH_UNITS, LOCATIONS[0], exact=True)
        now_ms = int(time.time() * 1000)
        sale = {
            "channel": FLASH_CHANNEL,
            "skus": [FLASH_SKU],
            "start_ms": now_ms - 60_000,  # running now, even on a server whose clock is behind
            "end_ms": now_ms + 3_600_000,
            "rate_per_s": 2,  # slower than buyers come: a queue forms, and they poll
            "max_active": 10,
            "token_ttl_ms": 15_000,
            "limit": FLASH_LIMIT,
            "poll_ms": 500,
            "idle_ms": 10_000,
        }
        _call(http, "PUT", f"/v1/sales/{seg(SALE)}", sale)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master sets up, once
    if not checkout_key() or not environment.host:
        log.error("set STOCKGUARD_KEY (and STOCKGUARD_OPERATOR_KEY) and pass --host")
        environment.process_exit_code = 1
        if environment.runner is not None:
            environment.runner.quit()
        return
    started = time.monotonic()
    set_up(environment.host, operator_key())
    log.info("stockguard set up in %.1f s (run %s)", time.monotonic() - started, RUN)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    """How often each documented refusal and ticket state came back (they count as successes)."""
    if OUTCOMES:
        counts = ", ".join(f"{n:,} x {what}" for what, n in sorted(OUTCOMES.items()))
        log.info("expected outcomes: %s", counts)


# -- outcomes -----------------------------------------------------------------------------


class Refusal(NamedTuple):
    """A documented refusal: its problem type's name and the problem's data."""

    kind: str
    data: dict[str, Any]


Outcome = dict[str, Any] | Refusal | None  # None: a failure


def problem(response: ResponseContextManager) -> Refusal:
    try:
        data = response.json()
    except ValueError:
        return Refusal("", {})
    if not isinstance(data, dict):
        return Refusal("", {})
    return Refusal(str(data.get("type", "")).rpartition("/")[2], data)


def judge(response: ResponseContextManager, ok: int, *expected: str) -> Outcome:
    """Success for the `ok` status (its body) and for the documented refusals named in
    `expected`; failure for anything else, with what came back."""
    if response.status_code == ok:
        response.success()  # type: ignore[no-untyped-call]
        body: dict[str, Any] = response.json()
        return body
    refusal = problem(response)
    kind = refusal.kind
    if 400 <= response.status_code < 500 and kind in expected:
        response.success()  # type: ignore[no-untyped-call]
        OUTCOMES[f"{response.request_meta['name']}: {response.status_code} {kind}"] += 1
        return refusal
    text = kind or (response.text or "")[:200] or repr(getattr(response, "error", None))
    response.failure(f"{response.status_code} {text}")  # type: ignore[no-untyped-call]
    return None


class StockguardUser(FastHttpUser):
    """A FastHttpUser with its key on every request."""

    abstract = True
    key = staticmethod(checkout_key)

    def __init__(self, environment: Environment) -> None:
        self.default_headers = {"Authorization": f"Bearer {self.key()}"}
        super().__init__(environment)

    def post(self, path: str, name: str, body: Any, ok: int, *expected: str) -> Outcome:
        with self.client.post(
            path, json=body, name=name, headers=idempotency(), catch_response=True
        ) as response:
            return judge(response, ok, *expected)

    def get(self, path: str, name: str, *expected: str) -> Outcome:
        with self.client.get(path, name=name, catch_response=True) as response:
            return judge(response, 200, *expected)


# -- the users ----------------------------------------------------------------------------


class CheckoutUser(StockguardUser):
    """A checkout service: holds a cart, then confirms after payment (most carts), releases
    it (some) or walks away and lets it expire (a few); and looks up ATS in between."""

    weight = 10
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.customer = f"{RUN}-shopper-{uuid.uuid4().hex[:8]}"
        self.abandoned: list[tuple[str, int]] = []  # (hold id, expires_at_ms)

    def cart(self) -> tuple[str, list[dict[str, Any]]]:
        channel = random.choices(list(CHANNELS), CHANNEL_WEIGHTS)[0]
        skus = set(random.choices(SKUS, SKU_WEIGHTS, k=random.randint(1, 3)))
        return channel, [{"sku": sku, "qty": random.randint(1, 3)} for sku in sorted(skus)]

    def hold(self, ttl_ms: int) -> dict[str, Any] | None:
        channel, lines = self.cart()
        body = {"channel": channel, "lines": lines, "ttl_ms": ttl_ms, "customer": self.customer}
        outcome = self.post("/v1/holds", "/v1/holds", body, 201, "insufficient-stock")
        return outcome if isinstance(outcome, dict) else None

    @task(3)
    def browse(self) -> None:
        channel = random.choices(list(CHANNELS), CHANNEL_WEIGHTS)[0]
        skus = "&".join(f"sku={seg(s)}" for s in random.sample(SKUS, 5))
        self.get(f"/v1/channels/{seg(channel)}/ats?{skus}", "/v1/channels/[channel]/ats")

    @task(7)
    def buy(self) -> None:
        hold = self.hold(600_000)
        if hold is None:
            return
        time.sleep(random.uniform(0.1, 0.5))  # taking payment
        path = f"/v1/holds/{seg(hold['id'])}/confirm"
        body = {"reference": f"order-{uuid.uuid4().hex[:12]}"}
        self.post(path, "/v1/holds/[id]/confirm", body, 200)

    @task(2)
    def walk_away(self) -> None:
        hold = self.hold(600_000)
        if hold is not None:
            path = f"/v1/holds/{seg(hold['id'])}/release"
            self.post(path, "/v1/holds/[id]/release", None, 200)

    @task(1)
    def abandon(self) -> None:
        """Leaves a short hold to expire; checks an earlier one is expired by now."""
        now_ms = int(time.time() * 1000)
        if self.abandoned and self.abandoned[0][1] + 2000 < now_ms:
            hold_id, _ = self.abandoned.pop(0)
            with self.client.get(
                f"/v1/holds/{seg(hold_id)}", name="/v1/holds/[id]", catch_response=True
            ) as response:
                hold = judge(response, 200)
                if isinstance(hold, dict) and hold["state"] != "expired":
                    state = hold["state"]
                    response.failure(f"an abandoned hold is {state} after its expiry")
        hold = self.hold(random.randint(1000, 3000))
        if hold is not None:
            self.abandoned.append((hold["id"], hold["expires_at_ms"]))


class FlashSaleUser(StockguardUser):
    """A buyer in the flash sale: joins the queue, polls until admitted, then holds 1 or 2
    units with the admission token and confirms. Most buyers then leave and a new one takes
    their place; the others queue again, until the sale's limit refuses them."""

    weight = 3
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.new_customer()

    def new_customer(self) -> None:
        self.customer = f"{RUN}-buyer-{uuid.uuid4().hex[:8]}"

    @task
    def queue_and_buy(self) -> None:
        queue = f"/v1/sales/{seg(SALE)}/queue"
        ticket = self.post(
            queue, "/v1/sales/[sale]/queue", {"customer": self.customer}, 201, "sale-ended"
        )
        while isinstance(ticket, dict) and ticket["state"] == "waiting":
            time.sleep(ticket["poll_after_ms"] / 1000)
            path = f"{queue}/{seg(ticket['ticket'])}?customer={seg(self.customer)}"
            ticket = self.get(path, "/v1/sales/[sale]/queue/[ticket]")
        if not isinstance(ticket, dict):
            return
        OUTCOMES[f"ticket {ticket['state']}"] += 1
        if ticket["state"] == "admitted":
            self.buy(ticket["token"])

    def buy(self, token: str) -> None:
        """Holds what it wants, or what the limit and the stock still allow, then pays."""
        body = {"channel": FLASH_CHANNEL, "ttl_ms": 300_000, "customer": self.customer}
        body["admission"] = token
        refusals = ("insufficient-stock", "limit-exceeded", "admission-used", "admission-expired")
        qty = random.randint(1, FLASH_LIMIT)
        while qty > 0:
            body["lines"] = [{"sku": FLASH_SKU, "qty": qty}]
            hold = self.post("/v1/holds", "/v1/holds (flash sale)", body, 201, *refusals)
            if isinstance(hold, dict):
                break
            if not isinstance(hold, Refusal) or hold.kind.startswith("admission-"):
                return
            data = hold.data
            left = data["limit"] - data["used"] if "used" in data else data["available"]
            qty = min(qty - 1, left)
        else:
            self.new_customer()  # at the limit, or sold out: this buyer leaves
            return
        time.sleep(random.uniform(0.1, 0.5))  # taking payment
        path = f"/v1/holds/{seg(hold['id'])}/confirm"
        self.post(path, "/v1/holds/[id]/confirm", {"reference": f"flash-{RUN}"}, 200)
        if random.random() < 0.7:  # most buyers leave with their order; the rest come back
            self.new_customer()


class OperatorUser(StockguardUser):
    """Stock staff, now and then: receive a delivery, adjust for damage or a find, count."""

    weight = 1
    wait_time = between(2.0, 5.0)
    key = staticmethod(operator_key)

    def place(self) -> tuple[str, str]:
        return random.choice(SKUS), random.choice(LOCATIONS)

    @task(3)
    def receive(self) -> None:
        sku, location = self.place()
        body = {"location": location, "qty": random.randint(5, 20), "reference": f"asn-{RUN}"}
        self.post(f"/v1/stock/{seg(sku)}/receive", "/v1/stock/[sku]/receive", body, 200)

    @task(1)
    def adjust(self) -> None:
        sku, location = self.place()
        delta = random.choice((-2, -1, 1))
        reason = "damaged in store" if delta < 0 else "found in the back room"
        body = {"location": location, "delta": delta, "reason": reason}
        path = f"/v1/stock/{seg(sku)}/adjust"
        self.post(path, "/v1/stock/[sku]/adjust", body, 200, "insufficient-stock")

    @task(1)
    def count(self) -> None:
        """Counts a shelf: usually what the system says, sometimes one more or one less."""
        sku, location = self.place()
        stock = self.get(f"/v1/stock/{seg(sku)}", "/v1/stock/[sku]")
        if not isinstance(stock, dict):
            return
        row = next((r for r in stock["locations"] if r["location"] == location), None)
        on_hand = row["on_hand"] if row else 0
        counted = max(0, on_hand + random.choice((0, 0, 0, -1, 1)))
        body = {"location": location, "counted": counted, "reason": "cycle count"}
        path = f"/v1/stock/{seg(sku)}/count"
        self.post(path, "/v1/stock/[sku]/count", body, 200, "count-below-reserved")
