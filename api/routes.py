"""Every /v1 endpoint: plain handlers over the engine, and the table that describes them.

The table (SPECS) drives the router, the role checks and the OpenAPI document, so
none of them can drift from the others.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from engine import validate
from engine.channels.sync import SyncStatus
from engine.channels.sync import status as sync_status
from engine.errors import ValidationError
from engine.ledger import MoveRow
from engine.models import BufferOverride, Catalog, Hold, LocationStock, SkuSettings, StockLevel

from . import schemas as s
from .auth import Role
from .endpoint import Call, Param, Spec
from .problems import ApiError

ANY = frozenset(Role)
CHECKOUT = frozenset({Role.CHECKOUT, Role.OPERATOR})
OPERATOR = frozenset({Role.OPERATOR})
MAX_ATS_SKUS = 1000


def _actor(call: Call) -> str:
    return f"{call.principal.name}#{call.principal.key_id}"


# -- holds --------------------------------------------------------------------------------


async def create_hold(call: Call) -> Hold:
    body: s.HoldCreate = call.body
    lines = [(line.sku, line.qty) for line in body.lines]
    sales = call.request.app.state.sales
    sale = await sales.for_hold(body.channel, [sku for sku, _ in lines])
    if sale is not None:  # a flash sale runs: the admission token decides
        return await sales.hold(  # type: ignore[no-any-return]
            sale,
            body.admission,
            body.channel,
            lines,
            ttl_ms=body.ttl_ms,
            customer=body.customer,
            hold_id=body.id or call.op_id,
        )
    return await call.engine.hold(  # type: ignore[no-any-return]
        body.channel,
        lines,
        ttl_ms=body.ttl_ms,
        customer=body.customer,
        hold_id=body.id or call.op_id,
    )


async def get_hold(call: Call) -> Hold:
    return await call.engine.get_hold(call.path("hold_id"))  # type: ignore[no-any-return]


async def extend_hold(call: Call) -> Hold:
    hold_id, ttl_ms = call.path("hold_id"), call.body.ttl_ms
    return await call.engine.extend(hold_id, ttl_ms, op_id=call.op_id)  # type: ignore[no-any-return]


async def confirm_hold(call: Call) -> Hold:
    return await call.engine.confirm(  # type: ignore[no-any-return]
        call.path("hold_id"), reference=call.body.reference, actor=_actor(call)
    )


async def release_hold(call: Call) -> Hold:
    return await call.engine.release(call.path("hold_id"))  # type: ignore[no-any-return]


# -- stock and availability ---------------------------------------------------------------


async def get_stock(call: Call) -> StockLevel:
    channels = [validate.name("channel", c) for c in call.query("channel")] or None
    return await call.engine.stock(call.path("sku"), channels)  # type: ignore[no-any-return]


async def get_sync(call: Call) -> SyncStatus:
    channel = call.path("channel")
    if channel not in call.request.app.state.connectors:
        raise ApiError(404, "not-found", f"no connected channel {channel!r}")
    skus = [validate.name("sku", sku) for sku in call.query("sku")]
    if len(skus) > MAX_ATS_SKUS:
        raise ValidationError("sku", f"ask for at most {MAX_ATS_SKUS} SKUs at once")
    return await sync_status(call.engine.client, channel, skus)


async def get_ats(call: Call) -> s.Ats:
    skus = call.query("sku")
    if len(skus) > MAX_ATS_SKUS:
        raise ValidationError("sku", f"ask for at most {MAX_ATS_SKUS} SKUs at once")
    channel = call.path("channel")
    return s.Ats(channel, await call.engine.ats(channel, skus))


# -- moves --------------------------------------------------------------------------------


def _move(verb: str, *fields: str) -> Callable[[Call], Awaitable[LocationStock]]:
    """A handler for one stock move: the SKU from the path, the rest from the body."""

    async def handler(call: Call) -> LocationStock:
        body = call.body
        args = [getattr(body, name) for name in fields]
        options = {"reason": body.reason, "reference": body.reference}
        if isinstance(body, s.Return):
            options["damaged"] = body.damaged
        method = getattr(call.engine, verb)
        return await method(  # type: ignore[no-any-return]
            call.path("sku"), *args, actor=_actor(call), op_id=call.op_id, **options
        )

    handler.__name__ = verb
    return handler


def _cursor(move: MoveRow) -> str:
    position = [move.at_ms, move.pos, move.id]
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode()


# A cursor's numbers must fit the ledger's BIGINT columns: larger ones are not ours.
_BigInt = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Cursor = tuple[_BigInt, _BigInt, str]


def _after(cursor: str | None) -> tuple[int, int, str] | None:
    if not cursor:
        return None
    try:
        at_ms, pos, move_id = msgspec.json.decode(base64.urlsafe_b64decode(cursor), type=_Cursor)
    except (ValueError, binascii.Error, msgspec.DecodeError):
        raise ValidationError("after", "is not a cursor this API returned") from None
    return at_ms, pos, move_id


async def list_moves(call: Call) -> s.MovePage:
    params = call.request.query_params
    limit_text = params.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= 1000:
        raise ValidationError("limit", f"must be an integer from 1 to 1000, got {limit_text!r}")
    limit = int(limit_text)
    for name in ("sku", "location"):  # as the document says: a name, or a 422
        if name in params:
            validate.name(name, params[name])
    moves = await call.request.app.state.store.moves_page(
        after=_after(params.get("after")),
        limit=limit + 1,
        sku=params.get("sku"),
        location=params.get("location"),
        kind=params.get("kind"),
    )
    more = len(moves) > limit
    moves = moves[:limit]
    return s.MovePage(moves, _cursor(moves[-1]) if more else None)


# -- catalog ------------------------------------------------------------------------------


async def get_catalog(call: Call) -> Catalog:
    return await call.engine.catalog()  # type: ignore[no-any-return]


async def put_location(call: Call) -> Catalog:
    return await call.engine.define_location(call.path("location"))  # type: ignore[no-any-return]


async def put_channel(call: Call) -> Catalog:
    body: s.ChannelIn = call.body
    return await call.engine.define_channel(  # type: ignore[no-any-return]
        call.path("channel"), body.locations, body.policy.to_policy()
    )


async def put_sku(call: Call) -> SkuSettings:
    return await call.engine.define_sku(call.path("sku"), buffer=call.body.buffer)  # type: ignore[no-any-return]


async def put_policy(call: Call) -> SkuSettings:
    policy = call.body.to_policy() if call.body is not None else None
    return await call.engine.set_policy(call.path("sku"), call.path("channel"), policy)  # type: ignore[no-any-return]


async def put_override(call: Call) -> SkuSettings:
    body = call.body
    override = BufferOverride(body.start_ms, body.end_ms, body.qty) if body is not None else None
    return await call.engine.set_buffer_override(call.path("sku"), override)  # type: ignore[no-any-return]


async def whoami(call: Call) -> s.Whoami:
    p = call.principal
    return s.Whoami(p.key_id, p.name, p.role.value)


# -- the table ----------------------------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/+#-]{0,99}$"}
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$"}
HOLD_ID = Param("hold_id", "path", _ID, required=True)
SKU = Param("sku", "path", _NAME, required=True)
CHANNEL = Param("channel", "path", _NAME, required=True)
LOCATION = Param("location", "path", _NAME, required=True)
HOLD_ERRORS = ("hold-not-found", "hold-not-active", "validation")
MOVE_ERRORS = ("unknown-sku", "unknown-location", "idempotency-conflict", "validation")


def _moves() -> list[Spec]:
    verbs: list[tuple[str, Any, tuple[str, ...], str, tuple[str, ...]]] = [
        ("receive", s.Receive, ("location", "qty"), "Receive units into on_hand", ()),
        (
            "adjust",
            s.Adjust,
            ("location", "delta"),
            "Adjust on_hand by a signed delta",
            ("insufficient-stock",),
        ),
        (
            "count",
            s.Count,
            ("location", "counted"),
            "Record a stock count",
            ("count-below-reserved",),
        ),
        ("ship", s.Ship, ("location", "qty"), "Ship committed units", ("insufficient-committed",)),
        (
            "cancel",
            s.Cancel,
            ("location", "qty"),
            "Cancel committed units back to sale",
            ("insufficient-committed",),
        ),
        ("return_units", s.Return, ("location", "qty"), "Take back shipped units", ()),
        (
            "transfer",
            s.Transfer,
            ("from_location", "to_location", "qty"),
            "Move available units between locations",
            ("insufficient-stock",),
        ),
    ]
    return [
        Spec(
            "POST",
            f"/v1/stock/{{sku}}/{verb.removesuffix('_units')}",
            _move(verb, *fields),
            OPERATOR,
            summary,
            LocationStock,
            body,
            params=(SKU,),
            errors=MOVE_ERRORS + extra,
            name=verb,
        )
        for verb, body, fields, summary, extra in verbs
    ]


SPECS: tuple[Spec, ...] = (
    Spec("POST", "/v1/holds", create_hold, CHECKOUT, "Place a hold", Hold, s.HoldCreate, 201,
         errors=("insufficient-stock", "unknown-sku", "unknown-channel", "idempotency-conflict",
                 "validation", "admission-required", "admission-invalid", "admission-used",
                 "admission-expired", "limit-exceeded"), hold_action="place",
         name="create_hold"),
    Spec("GET", "/v1/holds/{hold_id}", get_hold, ANY, "Read a hold", Hold, params=(HOLD_ID,),
         errors=("hold-not-found", "validation"), name="get_hold"),
    Spec("POST", "/v1/holds/{hold_id}/extend", extend_hold, CHECKOUT, "Extend a hold", Hold,
         s.HoldExtend, params=(HOLD_ID,), errors=(*HOLD_ERRORS, "shortfall"),
         hold_action="extend", name="extend_hold"),
    Spec("POST", "/v1/holds/{hold_id}/confirm", confirm_hold, CHECKOUT,
         "Confirm a hold: its units become committed", Hold, s.HoldConfirm, params=(HOLD_ID,),
         errors=(*HOLD_ERRORS, "shortfall"), hold_action="confirm", name="confirm_hold"),
    Spec("POST", "/v1/holds/{hold_id}/release", release_hold, CHECKOUT,
         "Release a hold's units at once", Hold, params=(HOLD_ID,), errors=HOLD_ERRORS,
         hold_action="release", name="release_hold"),
    Spec("GET", "/v1/stock/{sku}", get_stock, ANY, "One SKU by location, with ATS per channel",
         StockLevel, params=(SKU, Param("channel", "query", {"type": "array", "items": _NAME},
                                        "channels to give ATS for (default: all)")),
         errors=("unknown-sku", "unknown-channel", "validation"), name="get_stock"),
    Spec("GET", "/v1/channels/{channel}/ats", get_ats, ANY, "ATS of many SKUs for one channel",
         s.Ats, params=(CHANNEL, Param("sku", "query", {"type": "array", "items": _NAME,
                                                         "maxItems": MAX_ATS_SKUS})),
         errors=("unknown-channel", "validation"), name="get_ats"),
    Spec("GET", "/v1/channels/{channel}/sync", get_sync, ANY,
         "A connected channel's outbound sync: pushes, backlog, lag, last accepted values",
         SyncStatus, params=(CHANNEL, Param("sku", "query", {"type": "array", "items": _NAME,
                                                              "maxItems": MAX_ATS_SKUS},
                                            "SKUs to give the last accepted value of")),
         errors=("not-found", "validation"), name="get_sync"),
    *_moves(),
    Spec("GET", "/v1/moves", list_moves, ANY, "Committed moves from the ledger, oldest first",
         s.MovePage, params=(
             Param("sku", "query", _NAME), Param("location", "query", _NAME),
             Param("kind", "query", {"type": "string"}),
             Param("after", "query", {"type": "string"}, "the `next` of the previous page"),
             Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000})),
         errors=("validation",), name="list_moves"),
    Spec("GET", "/v1/catalog", get_catalog, ANY, "Locations and channels", Catalog,
         name="get_catalog"),
    Spec("PUT", "/v1/locations/{location}", put_location, OPERATOR, "Add a location", Catalog,
         params=(LOCATION,), errors=("validation",), name="put_location"),
    Spec("PUT", "/v1/channels/{channel}", put_channel, OPERATOR,
         "Add or replace a channel: its locations in priority order, its default policy",
         Catalog, s.ChannelIn, params=(CHANNEL,), errors=("unknown-location", "validation"),
         name="put_channel"),
    Spec("PUT", "/v1/skus/{sku}", put_sku, OPERATOR, "Add a SKU or set its buffer", SkuSettings,
         s.SkuIn, params=(SKU,), errors=("validation",), name="put_sku"),
    Spec("PUT", "/v1/skus/{sku}/policies/{channel}", put_policy, OPERATOR,
         "Give a channel its own policy for this SKU", SkuSettings, s.PolicyIn,
         params=(SKU, CHANNEL), errors=("unknown-sku", "validation"), name="put_policy"),
    Spec("DELETE", "/v1/skus/{sku}/policies/{channel}", put_policy, OPERATOR,
         "Restore the channel's default policy for this SKU", SkuSettings,
         params=(SKU, CHANNEL), errors=("unknown-sku", "validation"), name="delete_policy"),
    Spec("PUT", "/v1/skus/{sku}/override", put_override, OPERATOR,
         "Replace the SKU's buffer during a time window", SkuSettings, s.OverrideIn,
         params=(SKU,), errors=("unknown-sku", "validation"), name="put_override"),
    Spec("DELETE", "/v1/skus/{sku}/override", put_override, OPERATOR,
         "Remove the buffer override", SkuSettings, params=(SKU,),
         errors=("unknown-sku", "validation"), name="delete_override"),
    Spec("GET", "/v1/whoami", whoami, ANY, "The calling key's id, name and role", s.Whoami,
         name="whoami"),
)  # fmt: skip
