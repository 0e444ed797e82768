"""Flash-sale endpoints: operators define sales; buyers (through checkout) join and poll.

The queue endpoints are the throttle in front of the holds of a sale's SKUs: a hold of
those SKUs on the sale's channel during the sale needs the admission token that a
ticket gets when it is admitted (HoldCreate.admission).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from engine import validate
from engine.errors import ValidationError
from engine.sales import Sale, SaleStats, Ticket

from .endpoint import Call, Param, Spec
from .routes import _NAME, ANY, CHECKOUT, OPERATOR
from .schemas import Name, ShortText, TimeMs, Units, _In


class SaleIn(_In):
    """A flash sale: its SKUs on one channel, its window, and how buyers are let in."""

    channel: Name
    skus: Annotated[list[Name], Meta(min_length=1, max_length=validate.MAX_LINES)]
    start_ms: TimeMs
    end_ms: TimeMs
    rate_per_s: Annotated[float, Meta(gt=0, le=1_000_000)]  # buyers admitted per second
    max_active: Annotated[int, Meta(ge=1, le=validate.MAX_QTY)]  # admitted, not yet holding
    token_ttl_ms: Annotated[int, Meta(ge=1000, le=validate.MAX_TTL_MS)]
    limit: Annotated[int, Meta(ge=1, le=validate.MAX_QTY)]  # units per customer per SKU
    randomize: bool = True  # joins before the start are placed at random at the start
    poll_ms: Annotated[int, Meta(ge=50, le=60_000)] = 1000
    idle_ms: Annotated[int, Meta(ge=50, le=validate.MAX_TTL_MS)] = 10_000
    buffer: Units | None = None  # the SKUs' buffer during the sale window


class JoinIn(_In):
    customer: Annotated[ShortText, Meta(min_length=1)]


async def put_sale(call: Call) -> Sale:
    body: SaleIn = call.body
    sale = Sale(name=call.path("sale"), skus=tuple(body.skus), **{
        f: getattr(body, f) for f in SaleIn.__struct_fields__ if f != "skus"
    })  # fmt: skip
    return await call.request.app.state.sales.define(sale)  # type: ignore[no-any-return]


async def get_sale(call: Call) -> SaleStats:
    return await call.request.app.state.sales.stats(call.path("sale"))  # type: ignore[no-any-return]


async def join_queue(call: Call) -> Ticket:
    sales = call.request.app.state.sales
    return await sales.join(call.path("sale"), call.body.customer)  # type: ignore[no-any-return]


async def poll_ticket(call: Call) -> Ticket:
    customer = call.request.query_params.get("customer")
    if not customer:
        raise ValidationError("customer", "the ticket's customer is required")
    sales = call.request.app.state.sales
    return await sales.poll(call.path("sale"), call.path("ticket"), customer)  # type: ignore[no-any-return]


SALE = Param("sale", "path", _NAME, required=True)
TICKET = Param("ticket", "path", {"type": "string", "maxLength": 64}, required=True)
CUSTOMER = Param("customer", "query", {"type": "string", "minLength": 1, "maxLength": 200},
                 "the customer the ticket was issued to", required=True)  # fmt: skip

SALE_SPECS: tuple[Spec, ...] = (
    Spec("PUT", "/v1/sales/{sale}", put_sale, OPERATOR, "Define or replace a flash sale", Sale,
         SaleIn, params=(SALE,), errors=("unknown-sku", "unknown-channel", "validation"),
         name="put_sale"),
    Spec("GET", "/v1/sales/{sale}", get_sale, ANY,
         "A sale and its queue: admitted so far, waiting, live admissions, sold out", SaleStats,
         params=(SALE,), errors=("unknown-sale", "validation"), name="get_sale"),
    Spec("POST", "/v1/sales/{sale}/queue", join_queue, CHECKOUT,
         "Join the sale's queue: a ticket with its place, ETA and when to poll", Ticket, JoinIn,
         201, params=(SALE,), errors=("unknown-sale", "sale-ended", "validation"),
         name="join_queue"),
    Spec("GET", "/v1/sales/{sale}/queue/{ticket}", poll_ticket, CHECKOUT,
         "Poll a ticket: waiting (place, ETA), admitted (a signed admission token) or sold out",
         Ticket, params=(SALE, TICKET, CUSTOMER),
         errors=("unknown-sale", "ticket-not-found", "validation"), name="poll_ticket"),
)  # fmt: skip
