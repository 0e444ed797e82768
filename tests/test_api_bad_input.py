"""The bad-input catalogue: every refusal is a 4xx problem+json, and nothing changes.

Each case checks the status, the media type, the problem's stable `type` name and the
data a caller needs, then compares the stock of every SKU, the catalog and the whole
outbox (holds and moves) with what they were before the request.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
from helpers import Api, problem, snapshot

from api.auth import Role, create_key

LINE = {"sku": "A", "qty": 1}
HOLD = {"channel": "web", "lines": [LINE]}
RECEIVE = {"location": "wh1", "qty": 1}


@pytest.fixture
async def shop(api_shop: Api) -> AsyncIterator[Api]:
    """10 A at wh1, 4 B at wh2, and a live hold of 2 A on web."""
    http = api_shop.http
    for sku, location, qty in (("A", "wh1", 10), ("B", "wh2", 4)):
        r = await http.post(f"/v1/stock/{sku}/receive", json={"location": location, "qty": qty})
        assert r.status_code == 200, r.text
    r = await http.post("/v1/holds", json={"channel": "web", "lines": [{"sku": "A", "qty": 2}]})
    assert r.status_code == 201, r.text
    before = await snapshot(api_shop)
    yield api_shop
    assert await snapshot(api_shop) == before, "a refused request changed the state"


@dataclass(frozen=True)
class Bad:
    """One bad request and the problem it must get."""

    method: str
    path: str
    body: Any = None  # JSON, or bytes sent as they are
    status: int = 422
    problem: str = "validation"
    data: dict[str, Any] = field(default_factory=dict)
    role: str = "operator"
    headers: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] | None = None

    async def send(self, api: Api) -> httpx.Response:
        """Sends the request as `role`; role "none" sends no key of its own."""
        headers = {**(api.auth(self.role) if self.role != "none" else {}), **self.headers}
        content = self.body if isinstance(self.body, bytes) else None
        json = None if isinstance(self.body, bytes) else self.body
        request = api.http.build_request(
            self.method, self.path, json=json, content=content, headers=headers, params=self.params
        )
        if not any(name.lower() == "authorization" for name in headers):
            del request.headers["authorization"]  # the client's operator key
        return await api.http.send(request)


def hold(*lines: Any, **fields: Any) -> Bad:
    """A hold of the given lines (or HOLD's) with fields replaced, sent by checkout."""
    body = {**HOLD, **({"lines": list(lines)} if lines else {}), **fields}
    return Bad("POST", "/v1/holds", body, role="checkout")


def receive(sku: str = "A", **fields: Any) -> Bad:
    return Bad("POST", f"/v1/stock/{sku}/receive", {**RECEIVE, **fields})


def expect(bad: Bad, status: int, name: str, **data: Any) -> Bad:
    return dataclasses.replace(bad, status=status, problem=name, data=data)


# fmt: off
CASES: dict[str, Bad] = {
    # Unknown names: 404 with the name.
    "unknown-sku-hold": expect(hold({"sku": "NOPE", "qty": 1}), 404, "unknown-sku", sku="NOPE"),
    "unknown-sku-receive": expect(receive("NOPE"), 404, "unknown-sku", sku="NOPE"),
    "unknown-sku-stock": Bad("GET", "/v1/stock/NOPE", None, 404, "unknown-sku", {"sku": "NOPE"}),
    # A name is checked as sent: a trailing newline must not address SKU A.
    "sku-trailing-newline": Bad("PUT", "/v1/skus/A%0A", {}, data={"field": "sku"}),
    "sku-trailing-newline-receive": expect(receive("A%0A"), 422, "validation", field="sku"),
    "unknown-sku-policy": Bad(
        "PUT", "/v1/skus/NOPE/policies/web", {}, 404, "unknown-sku", {"sku": "NOPE"}
    ),
    "unknown-channel-hold": expect(hold(channel="nope"), 404, "unknown-channel", channel="nope"),
    "unknown-channel-ats": Bad(
        "GET", "/v1/channels/nope/ats", None, 404, "unknown-channel", {"channel": "nope"}
    ),
    "unknown-location-receive": expect(
        receive(location="nowhere"), 404, "unknown-location", location="nowhere"
    ),
    "unknown-location-channel": Bad(
        "PUT", "/v1/channels/new", {"locations": ["wh1", "nowhere"]}, 404, "unknown-location",
        {"location": "nowhere"},
    ),
    "unknown-hold": Bad(
        "POST", "/v1/holds/nohold/confirm", {}, 404, "hold-not-found", {"hold_id": "nohold"}
    ),
    # Quantities out of range.
    "hold-qty-0": expect(hold({"sku": "A", "qty": 0}), 422, "validation", field="$.lines[0].qty"),
    "hold-qty-neg": expect(
        hold({"sku": "A", "qty": -1}), 422, "validation", field="$.lines[0].qty"
    ),
    "hold-qty-huge": expect(
        hold({"sku": "A", "qty": 10**12}), 422, "validation", field="$.lines[0].qty"
    ),
    "hold-qty-summed-huge": expect(
        hold({"sku": "A", "qty": 10**9}, {"sku": "A", "qty": 10**9}), 422, "validation",
        field="qty",
    ),
    "receive-qty-0": expect(receive(qty=0), 422, "validation", field="$.qty"),
    "receive-qty-neg": expect(receive(qty=-1), 422, "validation", field="$.qty"),
    "receive-qty-huge": expect(receive(qty=10**12), 422, "validation", field="$.qty"),
    "receive-qty-beyond-int64": expect(receive(qty=10**30), 422, "validation", field="$.qty"),
    "adjust-delta-0": Bad(
        "POST", "/v1/stock/A/adjust", {"location": "wh1", "delta": 0, "reason": "x"},
        data={"field": "delta"},
    ),
    "ttl-0": expect(hold(ttl_ms=0), 422, "validation", field="$.ttl_ms"),
    "no-lines": expect(hold(lines=[]), 422, "validation", field="$.lines"),
    "cap-pct-over-100": Bad(
        "PUT", "/v1/skus/A/policies/web", {"kind": "cap_pct", "qty": 101}, 422, "validation",
        {"field": "policy.qty"},
    ),
    "override-ends-before-start": Bad(
        "PUT", "/v1/skus/A/override", {"start_ms": 10, "end_ms": 5, "qty": 1}, 422, "validation",
        {"field": "override.end_ms"},
    ),
    "transfer-to-itself": Bad(
        "POST", "/v1/stock/A/transfer", {"from_location": "wh1", "to_location": "wh1", "qty": 1},
        data={"field": "to_location"},
    ),
    "bad-sku-name-in-line": expect(
        hold({"sku": "no spaces", "qty": 1}), 422, "validation", field="$.lines[0].sku"
    ),
    "bad-hold-id": Bad("GET", "/v1/holds/" + "h" * 200, data={"field": "hold_id"}),
    "bad-sku-in-ats": Bad("GET", "/v1/channels/web/ats?sku=A&sku=no%20way", data={"field": "sku"}),
    # Wrong types.
    "string-qty": expect(hold({"sku": "A", "qty": "1"}), 422, "validation", field="$.lines[0].qty"),
    "bool-qty": expect(hold({"sku": "A", "qty": True}), 422, "validation", field="$.lines[0].qty"),
    "float-qty": expect(hold({"sku": "A", "qty": 1.5}), 422, "validation", field="$.lines[0].qty"),
    "integral-float-qty": expect(
        hold({"sku": "A", "qty": 1.0}), 422, "validation", field="$.lines[0].qty"
    ),
    "null-qty": expect(hold({"sku": "A", "qty": None}), 422, "validation", field="$.lines[0].qty"),
    "lines-object": expect(hold(lines=LINE), 422, "validation", field="$.lines"),
    "lines-string": expect(hold(lines="A"), 422, "validation", field="$.lines"),
    "null-channel": expect(hold(channel=None), 422, "validation", field="$.channel"),
    "number-channel": expect(hold(channel=7), 422, "validation", field="$.channel"),
    "string-ttl": expect(hold(ttl_ms="60000"), 422, "validation", field="$.ttl_ms"),
    "string-damaged": Bad(
        "POST", "/v1/stock/A/return", {"location": "wh1", "qty": 1, "damaged": "yes"},
        data={"field": "$.damaged"},
    ),
    "body-array": Bad("POST", "/v1/holds", [HOLD], data={"field": "$"}, role="checkout"),
    "body-null": Bad("POST", "/v1/stock/A/receive", b"null", data={"field": "$"}),
    "body-string": Bad("PUT", "/v1/skus/A", b'"buffer"', data={"field": "$"}),
    "missing-field": Bad("POST", "/v1/holds", {"lines": [LINE]}, data={"field": "$"}),
    "missing-nested-field": expect(hold({"sku": "A"}), 422, "validation", field="$.lines[0]"),
    # Unknown fields: a typo never passes silently.
    "unknown-field": expect(hold(qty=1), 422, "validation", field="$"),
    "unknown-nested-field": expect(
        hold({"sku": "A", "qty": 1, "colour": "red"}), 422, "validation", field="$.lines[0]"
    ),
    "misspelt-field": Bad("POST", "/v1/stock/A/receive", {"location": "wh1", "quantity": 1}),
    "unknown-policy-field": Bad("PUT", "/v1/channels/web", {"locations": ["wh1"], "polcy": {}}),
    # Malformed JSON: 400.
    "truncated": Bad("POST", "/v1/holds", b'{"channel": "web",', 400, "malformed-json"),
    "not-json": Bad("POST", "/v1/holds", b"channel=web", 400, "malformed-json"),
    "single-quotes": Bad("POST", "/v1/stock/A/receive", b"{'qty': 1}", 400, "malformed-json"),
    "nan": Bad(
        "POST", "/v1/stock/A/receive", b'{"location": "wh1", "qty": NaN}', 400, "malformed-json"
    ),
    "trailing-garbage": Bad(
        "POST", "/v1/stock/A/receive", b'{"location": "wh1", "qty": 1} {}', 400, "malformed-json"
    ),
    "not-utf8": Bad("POST", "/v1/holds", b"\xff\xfe{}", 400, "malformed-json", role="checkout"),
    "lone-surrogate": Bad(
        "POST", "/v1/holds",
        b'{"channel": "web", "lines": [{"sku": "A", "qty": 1}], "customer": "\\ud800"}',
        400, "malformed-json",
    ),
    # An empty body where one is required: 400, saying so.
    "empty-hold": Bad("POST", "/v1/holds", b"", 400, "malformed-json", role="checkout"),
    "blank-receive": Bad("POST", "/v1/stock/A/receive", b"  \n", 400, "malformed-json"),
    "empty-channel": Bad("PUT", "/v1/channels/web", b"", 400, "malformed-json"),
    "empty-extend": Bad("POST", "/v1/holds/nohold/extend", b"", 400, "malformed-json"),
    # Keys: missing, forged, in the wrong scheme.
    "no-key": Bad("POST", "/v1/holds", HOLD, 401, "unauthorized", role="none"),
    "forged-key": Bad(
        "POST", "/v1/holds", HOLD, 401, "unauthorized", role="none",
        headers={"Authorization": "Bearer sg_deadbeef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
    ),
    "forged-x-api-key": Bad(
        "POST", "/v1/stock/A/receive", RECEIVE, 401, "unauthorized", role="none",
        headers={"X-Api-Key": "sg_00000000_forged"},
    ),
    "empty-bearer": Bad(
        "GET", "/v1/stock/A", None, 401, "unauthorized", role="none",
        headers={"Authorization": "Bearer "},
    ),
    "basic-scheme": Bad(
        "GET", "/v1/catalog", None, 401, "unauthorized", role="none",
        headers={"Authorization": "Basic b3BlcmF0b3I6c2VjcmV0"},
    ),
    # The wrong role: 403 naming the roles that may.
    "checkout-receives": expect(
        Bad("POST", "/v1/stock/A/receive", RECEIVE, role="checkout"), 403, "forbidden",
        allowed=["operator"],
    ),
    "checkout-defines-location": Bad(
        "PUT", "/v1/locations/wh9", None, 403, "forbidden", {"allowed": ["operator"]},
        role="checkout",
    ),
    "read-only-holds": expect(
        Bad("POST", "/v1/holds", HOLD, role="read-only"), 403, "forbidden",
        allowed=["checkout", "operator"],
    ),
    "read-only-releases": Bad(
        "POST", "/v1/holds/nohold/release", None, 403, "forbidden",
        {"allowed": ["checkout", "operator"]}, role="read-only",
    ),
    "read-only-sets-buffer": Bad(
        "PUT", "/v1/skus/A", {"buffer": 1}, 403, "forbidden", {"allowed": ["operator"]},
        role="read-only",
    ),
    # Not enough stock, committed units or room for a count: 409 with the numbers.
    "insufficient-hold": expect(
        hold({"sku": "A", "qty": 100}), 409, "insufficient-stock", sku="A", requested=100,
        available=8,
    ),
    "insufficient-second-line": expect(
        hold({"sku": "B", "qty": 1}, {"sku": "A", "qty": 9}), 409, "insufficient-stock", sku="A",
        requested=9, available=8,
    ),
    "insufficient-pos": expect(
        hold(channel="pos"), 409, "insufficient-stock", sku="A", requested=1, available=0
    ),
    "insufficient-transfer": Bad(
        "POST", "/v1/stock/A/transfer", {"from_location": "wh1", "to_location": "wh2", "qty": 9},
        status=409, problem="insufficient-stock", data={"sku": "A", "requested": 9, "available": 8},
    ),
    "insufficient-adjust": Bad(
        "POST", "/v1/stock/B/adjust", {"location": "wh2", "delta": -5, "reason": "lost"},
        status=409, problem="insufficient-stock", data={"sku": "B", "requested": 5, "available": 4},
    ),
    "ship-uncommitted": Bad(
        "POST", "/v1/stock/A/ship", {"location": "wh1", "qty": 1}, 409, "insufficient-committed",
        {"sku": "A", "location": "wh1", "requested": 1, "committed": 0},
    ),
    "count-below-held": Bad(
        "POST", "/v1/stock/A/count", {"location": "wh1", "counted": 1}, 409,
        "count-below-reserved", {"sku": "A", "location": "wh1", "counted": 1, "reserved": 2},
    ),
    # Idempotency-Key that is not 1-255 printable ASCII characters: 400.
    "idempotency-key-non-ascii": Bad(
        "POST", "/v1/holds", HOLD, 400, "validation", {"field": "Idempotency-Key"},
        headers={"Idempotency-Key": "ключ".encode()},
    ),
    "idempotency-key-300-chars": Bad(
        "POST", "/v1/stock/A/receive", RECEIVE, 400, "validation", {"field": "Idempotency-Key"},
        headers={"Idempotency-Key": "k" * 300},
    ),
    "idempotency-key-empty": Bad(
        "PUT", "/v1/skus/A", {"buffer": 3}, 400, "validation", {"field": "Idempotency-Key"},
        headers={"Idempotency-Key": ""},
    ),
    "idempotency-key-control": Bad(
        "POST", "/v1/holds/nohold/release", None, 400, "validation",
        {"field": "Idempotency-Key"}, headers={"Idempotency-Key": b"a\x7fb"},
    ),
    # Unknown routes and methods are problems too.
    "no-such-route": Bad("GET", "/v1/nothing", None, 404, "not-found"),
    "wrong-method": Bad("DELETE", "/v1/holds", None, 405, "method-not-allowed"),
}
# fmt: on


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode()


# GET /v1/moves: a query parameter that is not what the document says is a 422 naming it.
MOVES_QUERIES = {
    "after-garbage": ("after", "not a cursor!"),
    "after-bad-padding": ("after", "abc"),
    "after-not-json": ("after", base64.urlsafe_b64encode(b"\x00\x01").decode()),
    "after-wrong-shape": ("after", _cursor({"at_ms": 1, "id": "x"})),
    "after-wrong-types": ("after", _cursor(["1", 2])),
    "after-float-time": ("after", _cursor([1.5, 0, "x"])),
    "after-beyond-int64": ("after", _cursor([2**63, 0, "x"])),
    "after-old-shape": ("after", _cursor([1, "x"])),
    "after-huge-time": ("after", _cursor([10**30, "x"])),
    "after-non-ascii": ("after", "ÿÿÿÿ"),
    "limit-0": ("limit", "0"),
    "limit-1001": ("limit", "1001"),
    "limit-negative": ("limit", "-1"),
    "limit-word": ("limit", "ten"),
    "limit-float": ("limit", "1.5"),
    "limit-empty": ("limit", ""),
    "limit-superscript": ("limit", "²"),
    "limit-huge": ("limit", "9" * 40),
    "sku-not-a-name": ("sku", "no spaces"),
    "location-not-a-name": ("location", "-wh1"),
}
for _name, (_param, _value) in MOVES_QUERIES.items():
    CASES[f"moves-{_name}"] = Bad(
        "GET", "/v1/moves", data={"field": _param}, role="read-only", params={_param: _value}
    )


@pytest.mark.parametrize("bad", CASES.values(), ids=CASES.keys())
async def test_bad_input_is_refused_and_changes_nothing(shop: Api, bad: Bad) -> None:
    problem(await bad.send(shop), bad.status, bad.problem, **bad.data)


# -- oversized bodies ----------------------------------------------------------------------

TWO_MB = b'{"channel": "web", "lines": [{"sku": "A", "qty": 1}], "customer": "' + b"x" * (2 << 20)


async def test_a_2mb_body_is_refused_by_its_content_length(shop: Api) -> None:
    r = await shop.http.post("/v1/holds", content=TWO_MB + b'"}', headers=shop.auth("checkout"))
    body = problem(r, 413, "body-too-large")
    assert str(shop.app.state.max_body_bytes) in body["detail"]


async def test_a_2mb_body_without_content_length_is_refused_while_streaming(shop: Api) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(0, len(TWO_MB), 64 << 10):
            sent += 1
            yield TWO_MB[i : i + (64 << 10)]

    r = await shop.http.post("/v1/stock/A/receive", content=chunks())
    assert "content-length" not in r.request.headers
    problem(r, 413, "body-too-large")
    assert sent <= (1 << 20) // (64 << 10) + 1  # it stopped reading just past 1 MB


async def test_a_content_length_that_is_not_a_number_neither_crashes_nor_lifts_the_limit(
    shop: Api,
) -> None:
    """'²' passes str.isdigit() but not int(): it used to be a 500."""
    headers = {"Content-Length": b"\xb2"}  # latin-1 '²'
    r = await shop.http.post("/v1/holds", content=TWO_MB + b'"}', headers=headers)
    problem(r, 413, "body-too-large")


async def test_an_empty_body_says_so(shop: Api) -> None:
    r = await shop.http.post("/v1/stock/A/receive", content=b"")
    assert "empty" in problem(r, 400, "malformed-json")["detail"]


async def test_a_body_just_under_the_limit_is_read(shop: Api) -> None:
    """The control for the 413s: the same shape of body, under 1 MB, is read and decoded."""
    padding = b"x" * ((1 << 20) - 200)
    body = b'{"location": "wh1", "qty": 1, "reason": "' + padding + b'"}'
    r = await shop.http.post("/v1/stock/A/receive", content=body)
    problem(r, 422, "validation", field="$.reason")  # too long a reason, but read in full


# -- revoked keys --------------------------------------------------------------------------


async def test_a_revoked_key_is_refused(shop: Api) -> None:
    store, keys = shop.app.state.store, shop.app.state.keys
    key, row = await create_key(store, "till-7", Role.CHECKOUT)
    await keys.load()
    headers = {"Authorization": f"Bearer {key}"}
    r = await shop.http.get("/v1/whoami", headers=headers)
    assert r.status_code == 200 and r.json()["key_id"] == row.id  # the key works until revoked
    assert await store.revoke_key(row.id, int(time.time() * 1000))
    await keys.load()
    r = await shop.http.post("/v1/holds", json=HOLD, headers=headers)
    body = problem(r, 401, "unauthorized")
    assert "revoked" in body["detail"]
    problem(await shop.http.get("/v1/whoami", headers=headers), 401, "unauthorized")
