"""create_app: the Starlette app, its lifespan, its one exception_handlers map."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.channels.base import ChannelConfig
from engine.channels.inbound import Inbox
from engine.channels.worker import connectors as channel_connectors
from engine.config import Settings
from engine.connect import connect
from engine.engine import Engine
from engine.ids import new_id
from engine.sales import Sales
from engine.store import Store

from . import openapi, problems, webhooks
from .auth import Keys
from .endpoint import JSON, endpoint
from .idempotency import Idempotency
from .metrics import CONTENT_TYPE, Metrics
from .routes import SPECS as CORE_SPECS
from .sales import SALE_SPECS
from .schemas import Health

MAX_BODY_BYTES = 1 << 20
SPECS = CORE_SPECS + SALE_SPECS
log = logging.getLogger("stockguard.http")
_NAME_PARAM = re.compile(r"\{(sku|location|channel|sale)\}")


class _NameConvertor(PathConvertor):
    """Starlette's path convertor, except that it takes every character. There, '.' stops
    at a newline and the route's '$' matches before one, so /v1/skus/A%0A would act on
    SKU A; here the name reaches validation as it was sent, and is refused."""

    regex = r"[\s\S]*"


register_url_convertor("name", _NameConvertor())
_LITERAL = re.compile(r"/[a-z_]+(?=/|$)")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_encode = msgspec.json.Encoder().encode


def _version() -> str:
    try:
        return version("stockguard")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "0+unknown"


class Observe:
    """Request ids, the latency histogram and one JSON log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app, self.metrics, self.access_log = app, metrics, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else new_id()
        scope["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route_name", "other")
            self.metrics.observe(scope["method"], route, status, started)
            if self.access_log:
                log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )


async def healthz(request: Request) -> Response:
    return Response(_encode(Health("ok")), media_type=JSON)


async def readyz(request: Request) -> Response:
    state = request.app.state
    checks: dict[str, str] = {}
    for name, probe in (
        ("redis", state.engine.client.ping()),
        ("scripts", state.engine.scripts.loaded()),
        ("store", state.store.count("api_keys")),
    ):
        try:
            result = await asyncio.wait_for(probe, 2.0)
            checks[name] = "ok" if result is not False else "missing"
        except Exception as error:
            checks[name] = f"{type(error).__name__}: {error}"
    ready = all(v == "ok" for v in checks.values())
    body = Health("ready" if ready else "not ready", checks)
    return Response(_encode(body), 200 if ready else 503, media_type=JSON)


async def metrics(request: Request) -> Response:
    state = request.app.state
    body = await state.metrics.render(state.engine.client, state.store, tuple(state.connectors))
    return Response(body, media_type=CONTENT_TYPE)


def _routes(document: dict[str, Any]) -> list[BaseRoute]:
    spec_json = _encode(document)

    async def openapi_json(request: Request) -> Response:
        return Response(spec_json, media_type=JSON)

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.DOCS_HTML)

    by_path: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        by_path.setdefault(spec.path, {})[spec.method] = endpoint(spec)
    # Names may hold '/', so their parameters match across segments ({sku:name}); the
    # paths with more literal segments go first, so /v1/skus/A/override is A's override.
    ordered = sorted(by_path, key=lambda path: -len(_LITERAL.findall(path)))
    routes: list[BaseRoute] = [
        Route(
            _NAME_PARAM.sub(r"{\1:name}", path),
            _dispatch(by_path[path]),
            methods=list(by_path[path]),
        )
        for path in ordered
    ]
    return [
        *routes,
        Route("/v1/webhooks/{channel}", webhooks.receive, methods=["POST", "GET"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Mount("/docs/static", StaticFiles(directory=openapi.swagger_ui_dir()), name="docs"),
    ]


def _dispatch(handlers: dict[str, Any]) -> Any:
    if len(handlers) == 1:
        return next(iter(handlers.values()))

    async def by_method(request: Request) -> Response:
        return await handlers[request.method](request)  # type: ignore[no-any-return]

    return by_method


def create_app(
    settings: Settings,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    access_log: bool = True,
    channels: Sequence[ChannelConfig] = (),
) -> Starlette:
    """The HTTP API over the engine at settings.redis_url and the ledger at ledger_url."""
    if settings.redis_url is None:
        raise ValueError("create_app needs settings.redis_url (`stockguard serve` sets it)")
    redis_url = settings.redis_url
    app_metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = await connect(redis_url)
        store = Store.from_url(settings.ledger_url)
        try:
            engine = Engine(client, settings)
            await engine.scripts.load()
            await store.open()
            app.state.engine = engine
            app.state.store = store
            app.state.keys = Keys(store)
            await app.state.keys.load()
            app.state.idempotency = Idempotency(client, settings.idempotency_ttl_ms)
            app.state.sales = Sales(engine)
            app.state.inbox = Inbox(engine)
            reload = asyncio.create_task(app.state.keys.reload_forever())
            try:
                async with channel_connectors(list(channels)) as connected:
                    app.state.connectors = connected
                    yield
            finally:
                reload.cancel()
        finally:
            await store.close()
            await client.aclose()

    app = Starlette(
        routes=_routes(openapi.document(SPECS, _version())),
        exception_handlers=problems.handlers(),
        lifespan=lifespan,
    )
    app.state.metrics = app_metrics
    app.state.max_body_bytes = max_body_bytes
    app.state.settings = settings
    app.add_middleware(Observe, metrics=app_metrics, access_log=access_log)
    return app
