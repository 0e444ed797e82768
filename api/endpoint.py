"""How one API endpoint runs: authenticate, check the role, read and decode the body,
honour the Idempotency-Key, call the handler, encode its result.

Handlers are plain `async def handler(call: Call) -> result` functions that never
catch engine errors; this module turns every refusal into its problem response (via
problems.render), so an idempotent replay returns a refusal exactly as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from engine.errors import StockguardError

from . import idempotency, problems
from .auth import Principal, Role, require
from .problems import ApiError

JSON = "application/json"
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Param:
    """A path or query parameter, for the OpenAPI document."""

    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass
class Call:
    """What a handler gets: the request, who calls, the decoded body, the engine op id."""

    request: Request
    principal: Principal
    body: Any
    op_id: str | None = None  # set from the Idempotency-Key, see idempotency.engine_id

    @property
    def engine(self) -> Any:
        return self.request.app.state.engine

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    def query(self, name: str) -> list[str]:
        return self.request.query_params.getlist(name)


@dataclass(frozen=True)
class Spec:
    """One endpoint: everything the router, the OpenAPI document and the docs need."""

    method: str
    path: str
    handler: Callable[[Call], Awaitable[Any]]
    roles: frozenset[Role]
    summary: str
    response: Any = None
    body: Any = None
    status: int = 200
    params: tuple[Param, ...] = ()
    errors: tuple[str, ...] = ()  # problem types this endpoint may answer with
    hold_action: str = ""  # counted in stockguard_hold_outcomes_total
    name: str = field(default="")

    @property
    def mutating(self) -> bool:
        return self.method != "GET"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        return key.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (read straight off the ASGI channel)."""
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
        raise ApiError(413, "body-too-large", f"the body must be at most {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body-too-large", f"the body must be at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decoder(spec: Spec) -> Callable[[bytes], Any]:
    if spec.body is None:
        return lambda raw: None
    decode = msgspec.json.Decoder(spec.body).decode
    try:
        empty: Any = msgspec.convert({}, spec.body)  # every field optional: {} is the default
    except msgspec.ValidationError:
        empty = None

    def decoder(raw: bytes) -> Any:
        if not raw:  # no body at all; whitespace alone is malformed JSON
            if empty is not None:
                return empty
            raise ApiError(400, "malformed-json", "the body is empty: send a JSON object")
        try:
            return decode(raw)
        except msgspec.ValidationError as error:
            _, at, path = str(error).rpartition(" - at `")
            field = path.rstrip("`") if at else "$"  # no path: the error is about the whole body
            raise ApiError(422, "validation", str(error), field=field) from None
        except msgspec.DecodeError as error:
            raise ApiError(400, "malformed-json", f"the body is not valid JSON: {error}") from None

    return decoder


def endpoint(spec: Spec) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint that runs one Spec."""
    decode = _decoder(spec)

    async def run(call: Call) -> Response:
        try:
            result = await spec.handler(call)
        except (StockguardError, ApiError) as error:
            _count(call.request, spec.hold_action, problems.kind_of(error))
            return problems.render(call.request, error)
        _count(call.request, spec.hold_action, "ok")
        return Response(_encode(result), spec.status, media_type=JSON)

    async def handle(request: Request) -> Response:
        request.scope["route_name"] = spec.name
        state = request.app.state
        try:
            principal = await state.keys.authenticate(_bearer(request))
            require(principal, spec.roles)
            raw = await read_body(request, state.max_body_bytes) if spec.mutating else b""
            call = Call(request, principal, decode(raw))
            key = request.headers.get("idempotency-key") if spec.mutating else None
            if key is None:
                return await run(call)
            # Keys are scoped to the API key that sends them, as Stripe scopes them to the
            # account: two clients that pick the same key do not see each other's replies.
            scoped = f"{principal.key_id}/{idempotency.check_key(key)}"
            return await _idempotent(call, scoped, raw, run)
        except (StockguardError, ApiError) as error:
            return problems.render(request, error)

    return handle


def _count(request: Request, hold_action: str, outcome: str) -> None:
    if hold_action:
        request.app.state.metrics.hold(hold_action, outcome)


async def _idempotent(
    call: Call, key: str, raw: bytes, run: Callable[[Call], Awaitable[Response]]
) -> Response:
    """Runs the call once per Idempotency-Key; replays give the first response."""
    request = call.request
    store = request.app.state.idempotency
    fp = idempotency.fingerprint(request.method, request.url.path, raw)
    stored = await store.begin(key, fp)
    if stored is not None:
        headers = {"Idempotent-Replayed": "true"}
        return Response(stored.body, stored.status, headers, stored.content_type)
    sku = getattr(call.body, "sku_for_id", None) or request.path_params.get("sku")
    call.op_id = idempotency.engine_id(key, sku)
    try:
        response = await run(call)
    except BaseException:
        await store.abandon(key)
        raise
    content_type = response.headers.get("content-type", JSON)
    await store.finish(key, fp, response.status_code, response.body, content_type)
    return response
