"""Schemathesis against the app's own /openapi.json: no 5xx, and every response as documented.

Schemathesis generates the requests (valid ones, half of them steered onto the shop's real
SKUs, locations, channels and holds, and invalid ones); each is sent through the `api`
fixture's client, on the session event loop the app's lifespan runs in, with an operator
key, and its response is checked by schemathesis's own validators.

Hypothesis runs in a worker thread so that the event loop stays free to serve the requests
it sends (`asyncio.run_coroutine_threadsafe`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from helpers import Api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import SPECS
from engine import validate

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PLAIN = {("GET", "/healthz"), ("GET", "/readyz")}  # no key, no input: nothing to get wrong
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}
OPERATIONS = sorted({(spec.method, spec.path) for spec in SPECS} | PLAIN)
KNOWN = {
    "sku": ["A", "B", "C"],
    "location": ["wh1", "wh2", "store"],
    "from_location": ["wh1", "wh2", "store"],
    "to_location": ["wh1", "wh2", "store"],
    "channel": ["web", "amazon", "pos"],
}


async def populate(api: Api) -> list[str]:
    """Stock at every location, a committed order, and holds in each state; their ids."""
    http = api.http
    for sku in ("A", "B", "C"):
        for location, qty in (("wh1", 20), ("wh2", 10), ("store", 5)):
            r = await http.post(f"/v1/stock/{sku}/receive", json={"location": location, "qty": qty})
            assert r.status_code == 200, r.text
    ids = []
    for action in ("", "confirm", "release", ""):
        body = {"channel": "web", "lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 1}]}
        r = await http.post("/v1/holds", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        if action:
            assert (await http.post(f"/v1/holds/{ids[-1]}/{action}", json={})).status_code == 200
    return ids


def integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; msgspec (rightly, for quantities) does not:
    steered cases send such numbers as ints, so they get past the type check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        value.update((k, integral(v)) for k, v in value.items())
    elif isinstance(value, list):
        value[:] = [integral(v) for v in value]
    return value


def steer(draw: Callable[[Any], Any], case: Any, hold_ids: list[str]) -> None:
    """Points a valid case at names that exist, with small quantities, so that it gets
    past the 404s into the engine's real paths (still valid by the schema)."""
    for name in list(case.path_parameters or {}):
        if name in KNOWN:
            case.path_parameters[name] = draw(st.sampled_from(KNOWN[name]))
        elif name == "hold_id":
            case.path_parameters[name] = draw(st.sampled_from(hold_ids))
    for name, value in list((case.query or {}).items()):
        if name in ("sku", "location", "channel"):
            picked = draw(st.lists(st.sampled_from(KNOWN[name]), min_size=1, max_size=3))
            case.query[name] = picked if isinstance(value, list) else picked[0]
    if isinstance(case.body, dict):
        _steer_body(draw, integral(case.body))
    if case.headers and draw(st.booleans()):
        case.headers.pop("Idempotency-Key", None)  # most real calls succeed only once per key


def _steer_body(draw: Callable[[Any], Any], body: dict[str, Any]) -> None:
    if type(body.get("start_ms")) is int and type(body.get("end_ms")) is int:
        end = body["start_ms"] + draw(st.integers(1, 10**9))  # a real window
        body["end_ms"] = min(end, validate.MAX_TIME_MS)
    for name in ("location", "from_location", "to_location", "channel"):
        if isinstance(body.get(name), str):
            body[name] = draw(st.sampled_from(KNOWN[name]))
    if isinstance(body.get("locations"), list):
        locations = st.sampled_from(KNOWN["location"])
        body["locations"] = draw(st.lists(locations, min_size=1, unique=True))
    lines = body.get("lines") if isinstance(body.get("lines"), list) else []
    for part in [body, *lines]:
        if not isinstance(part, dict):
            continue
        if type(part.get("qty")) is int and part["qty"] >= 1:
            part["qty"] = draw(st.integers(1, 6))
        if isinstance(part.get("sku"), str):
            part["sku"] = draw(st.sampled_from(KNOWN["sku"]))


def request_of(case: Any, key: str) -> dict[str, Any]:
    """The httpx arguments for a case; the generated Authorization becomes the operator key
    (a case that leaves the header out, to see it refused, still leaves it out)."""
    sent = case.as_transport_kwargs(base_url="http://stockguard.test")
    headers = {k: v for k, v in sent["headers"].items() if k.lower() != "authorization"}
    if any(k.lower() == "authorization" for k in sent["headers"]):
        headers["Authorization"] = f"Bearer {key}"
    request = {"method": sent["method"], "url": sent["url"], "headers": headers}
    request["params"] = sent.get("params") or None
    if "json" in sent:
        request["json"] = sent["json"]
    elif "data" in sent:
        request["content"] = sent["data"]
    return request


RUNS = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in EXAMPLES
    if mode is GenerationMode.POSITIVE or (method, path) not in PLAIN
]


def send_from_thread(
    api: Api, request: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> httpx.Response:
    """Sends on the event loop and waits; no Authorization header unless the case has one
    (the client would add the operator key by default)."""
    built = api.http.build_request(**request)
    if not any(name.lower() == "authorization" for name in request["headers"]):
        del built.headers["authorization"]
    return asyncio.run_coroutine_threadsafe(api.http.send(built), loop).result(timeout=30)


@pytest.mark.parametrize(("method", "path", "mode"), RUNS)
async def test_every_response_is_documented(
    api_shop: Api, method: str, path: str, mode: GenerationMode
) -> None:
    api = api_shop
    hold_ids = await populate(api)
    schema = schemathesis.openapi.from_dict((await api.http.get("/openapi.json")).json())
    operation = schema[path][method]
    key = api.keys["operator"]
    loop = asyncio.get_running_loop()
    statuses: dict[int, int] = {}

    @st.composite
    def cases(draw: Callable[[Any], Any]) -> Any:
        case = draw(operation.as_strategy(generation_mode=mode))
        if mode is GenerationMode.POSITIVE and draw(st.booleans()):
            steer(draw, case, hold_ids)
        return case

    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(cases())
    def run(case: Any) -> None:
        request = request_of(case, key)
        response = send_from_thread(api, request, loop)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks, headers=request["headers"])

    await asyncio.to_thread(run)
    assert sum(statuses.values()) >= 1
    assert not any(status >= 500 for status in statuses), statuses


async def test_every_operation_of_the_document_is_covered(api: Api) -> None:
    document = (await api.http.get("/openapi.json")).json()
    served = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert served == set(OPERATIONS)


async def test_the_document_says_what_the_router_accepts(api: Api) -> None:
    """Names may carry '/' in paths and in queries alike. Every mutating call documents
    the 400 for a bad Idempotency-Key."""
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    stock = paths["/v1/stock/{sku}"]["get"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in stock}
    assert "/" in by_name["sku"]["pattern"] and "/" in by_name["channel"]["items"]["pattern"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if method != "get":
                assert "400" in operation["responses"], (method, path)
                assert "Idempotency-Key" in operation["responses"]["400"]["description"]


async def test_steered_cases_reach_the_engine(api_shop: Api) -> None:
    """The steering works: valid holds on real SKUs are placed, not refused as unknown."""
    api = api_shop
    hold_ids = await populate(api)
    schema = schemathesis.openapi.from_dict((await api.http.get("/openapi.json")).json())
    operation = schema["/v1/holds"]["POST"]
    key = api.keys["operator"]
    loop = asyncio.get_running_loop()
    statuses: list[int] = []

    @settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def run(data: Any) -> None:
        case = data.draw(operation.as_strategy())
        steer(data.draw, case, hold_ids)
        request = request_of(case, key)
        statuses.append(send_from_thread(api, request, loop).status_code)

    await asyncio.to_thread(run)
    assert 201 in statuses, statuses


async def test_the_checks_catch_undocumented_responses(api_shop: Api) -> None:
    """The control: the same validation refuses a 5xx, a body off its schema, an
    undocumented status and a problem sent as plain JSON."""
    api = api_shop
    schema = schemathesis.openapi.from_dict((await api.http.get("/openapi.json")).json())
    case = schema["/v1/stock/{sku}"]["GET"].Case(path_parameters={"sku": "A"})
    request = api.http.build_request("GET", "http://stockguard.test/v1/stock/A")
    good = await api.http.send(request)
    case.validate_response(good, checks=CHECKS)  # the real answer passes
    problem = {"type": "x", "title": "t", "status": 404, "detail": "d"}
    for status, body in (
        (500, problem),
        (200, {**good.json(), "locations": "everywhere"}),
        (202, good.json()),
        (404, problem),  # as application/json, not application/problem+json
    ):
        bad = httpx.Response(status, json=body, request=request)
        bad.elapsed = good.elapsed
        with pytest.raises(FailureGroup):
            case.validate_response(bad, checks=CHECKS)
