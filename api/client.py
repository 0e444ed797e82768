"""An async, typed client of the stockguard HTTP API, for checkout services and operators.

    async with Client("http://127.0.0.1:8000", "sg_...") as stock:
        hold = await stock.hold("web", {"TSHIRT-RED-M": 1}, ttl_ms=600_000)
        await stock.confirm(hold.id, reference="order-1001")

Every mutating call carries an Idempotency-Key (a fresh uuid4 unless you pass one) and
is retried with that same key after a lost connection, a timeout, a 502/503/504 or a
409 idempotency-in-progress, so a retry never applies twice: the server replays the
first outcome. Other refusals are never retried; they raise a ProblemError subclass
that carries the problem's data (sku, requested, available, ...).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, ClassVar, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
import msgspec

from engine.ledger import MoveRow
from engine.models import (
    Catalog,
    Hold,
    LocationStock,
    Policy,
    SkuSettings,
    StockLevel,
)
from engine.sales import Ticket

from .schemas import Ats, MovePage, Problem

T = TypeVar("T")
Lines = Mapping[str, int] | Iterable[tuple[str, int]]

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
_RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_BASE_FIELDS = frozenset({"type", "title", "status", "detail", "instance", "request_id"})
_POLICY_IN = ("kind", "qty", "buffer")  # since_ms is the engine's to stamp


# -- errors -------------------------------------------------------------------------------


class ProblemError(Exception):
    """The server refused the call with a problem+json answer; its fields are attributes."""

    name: ClassVar[str] = ""  # the problem type's last segment this class stands for

    def __init__(self, status: int, problem: Problem) -> None:
        self.status, self.problem, self.detail = status, problem, problem.detail
        self.kind = problem.type.rpartition("/")[2]  # e.g. "insufficient-stock"
        self.request_id = problem.request_id
        fields = msgspec.structs.asdict(problem).items()
        self.data = {k: v for k, v in fields if k not in _BASE_FIELDS and v is not None}
        vars(self).update(self.data)
        super().__init__(f"{status} {self.kind}: {problem.detail}")


class InsufficientStockError(ProblemError):
    """Fewer units were available than requested: `available` is how many there were."""

    name = "insufficient-stock"
    sku: str
    requested: int
    available: int


class HoldNotFoundError(ProblemError):
    name = "hold-not-found"
    hold_id: str


class HoldNotActiveError(ProblemError):
    name = "hold-not-active"
    hold_id: str
    state: str  # confirmed, released or expired: it cannot change that way


class ShortfallError(ProblemError):
    """An expired hold could not be confirmed or extended: refund the buyer."""

    name = "shortfall"
    hold_id: str
    missing: dict[str, int]  # SKU -> units short


class IdempotencyConflictError(ProblemError):
    name = "idempotency-conflict"  # the key (or hold id) was used with another request


class IdempotencyInProgressError(ProblemError):
    name = "idempotency-in-progress"  # the first request with the key still ran at every retry


class UnauthorizedError(ProblemError):
    name = "unauthorized"


class ForbiddenError(ProblemError):
    name = "forbidden"
    allowed: list[str]  # the roles that may


class ValidationError(ProblemError):
    name = "validation"
    field: str | None = None  # the offending field, when the server can name it


class UnknownSkuError(ProblemError):
    name = "unknown-sku"
    sku: str


class UnknownChannelError(ProblemError):
    name = "unknown-channel"
    channel: str


class UnknownLocationError(ProblemError):
    name = "unknown-location"
    location: str


class LimitExceededError(ProblemError):
    name = "limit-exceeded"  # sku, requested, limit, used: the sale's per-customer limit


class AdmissionError(ProblemError):
    name = "admission-invalid"  # a forged token, or another sale's or customer's


class AdmissionRequiredError(AdmissionError):
    name = "admission-required"  # the SKU is in a running flash sale: join its queue


class AdmissionUsedError(AdmissionError):
    name = "admission-used"


class AdmissionExpiredError(AdmissionError):
    name = "admission-expired"  # join the queue again


class SaleEndedError(ProblemError):
    name = "sale-ended"


class UnavailableError(ProblemError):
    name = "unavailable"  # the server (or a proxy) could not serve the call, even on retries


def _subclasses(cls: type[ProblemError]) -> list[type[ProblemError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


_ERRORS = {cls.name: cls for cls in _subclasses(ProblemError)}


def _error(response: httpx.Response) -> ProblemError:
    """The exception for a refusal; a body that is no problem (a proxy's page) maps too."""
    try:
        problem = msgspec.json.decode(response.content, type=Problem)
    except msgspec.MsgspecError:
        kind = "unavailable" if response.status_code in RETRY_STATUSES else "http-error"
        text = response.text[:200] or response.reason_phrase
        problem = Problem(kind, response.reason_phrase, response.status_code, text)
    cls = _ERRORS.get(problem.type.rpartition("/")[2], ProblemError)
    return cls(response.status_code, problem)


def _retry_after_s(response: httpx.Response) -> float | None:
    value: str = response.headers.get("retry-after", "")
    return min(float(value), MAX_RETRY_AFTER_S) if value.isdigit() else None


class Options(TypedDict, total=False):
    reference: str  # the order, purchase order or RMA the move belongs to
    idempotency_key: str  # default: a fresh uuid4 per call, reused by its retries


class MoveOptions(Options, total=False):
    reason: str  # why; a damaged return needs one


# -- the client ---------------------------------------------------------------------------


class Client:
    """One connection pool to one stockguard server, authenticated by one API key.

    A call that failed in a retryable way is sent again up to `retries` times, after a
    backoff from `backoff_s` doubling up to `max_backoff_s` (or the server's Retry-After).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "stockguard-client"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter, so retrying clients do not march in step."""
        return min(self.max_backoff_s, self.backoff_s * 2.0**attempt) * random.uniform(0.5, 1.0)

    async def _call(
        self,
        method: str,
        path: str,
        into: type[T],
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        """One call, retried where that is safe; the answer decoded as `into`."""
        key = idempotency_key or str(uuid.uuid4())
        headers = {} if method == "GET" else {"Idempotency-Key": key}
        content = msgspec.json.encode(body) if body is not None else None  # same bytes per try
        if content is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(
                    method, path, content=content, params=params, headers=headers
                )
            except _RETRY_ERRORS:
                if last:
                    raise
                await asyncio.sleep(self._backoff(attempt))
                continue
            if response.is_success:
                return msgspec.json.decode(response.content, type=into)
            error = _error(response)
            retryable = isinstance(error, IdempotencyInProgressError)
            if last or not (retryable or response.status_code in RETRY_STATUSES):
                raise error
            await asyncio.sleep(_retry_after_s(response) or self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- holds -----------------------------------------------------------------------------

    async def hold(
        self,
        channel: str,
        lines: Lines,
        *,
        ttl_ms: int,
        customer: str | None = None,
        hold_id: str | None = None,
        admission: str | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Holds every line ({sku: qty} or [(sku, qty)]) for ttl_ms, or raises and holds none.

        During a flash sale of these SKUs, pass the admitted ticket's token as `admission`.
        """
        pairs = lines.items() if isinstance(lines, Mapping) else lines
        body = {"channel": channel, "lines": [{"sku": s, "qty": q} for s, q in pairs]}
        body |= _given(ttl_ms=ttl_ms, customer=customer, id=hold_id, admission=admission)
        return await self._call("POST", "/v1/holds", Hold, body, idempotency_key=idempotency_key)

    async def join(self, sale: str, customer: str) -> Ticket:
        """Joins a flash sale's queue (joining again returns the customer's live ticket)."""
        path, body = f"/v1/sales/{_seg(sale)}/queue", {"customer": customer}
        return await self._call("POST", path, Ticket, body)

    async def poll(self, ticket: Ticket, customer: str) -> Ticket:
        """The ticket now: waiting (poll again after poll_after_ms), admitted (with its
        token), sold_out, ended, expired or dropped."""
        path = f"/v1/sales/{_seg(ticket.sale)}/queue/{_seg(ticket.ticket)}"
        return await self._call("GET", path, Ticket, params={"customer": customer})

    async def get_hold(self, hold_id: str) -> Hold:
        """The hold as it stands now (`expired` once past its expiry by the server's clock)."""
        return await self._call("GET", f"/v1/holds/{_seg(hold_id)}", Hold)

    async def extend(
        self, hold_id: str, ttl_ms: int, *, idempotency_key: str | None = None
    ) -> Hold:
        """Keeps the hold until at least ttl_ms from now."""
        path, body = f"/v1/holds/{_seg(hold_id)}/extend", {"ttl_ms": ttl_ms}
        return await self._call("POST", path, Hold, body, idempotency_key=idempotency_key)

    async def confirm(
        self, hold_id: str, reference: str | None = None, *, idempotency_key: str | None = None
    ) -> Hold:
        """Turns the hold's units into committed ones, after payment."""
        path, body = f"/v1/holds/{_seg(hold_id)}/confirm", _given(reference=reference)
        return await self._call("POST", path, Hold, body, idempotency_key=idempotency_key)

    async def release(self, hold_id: str, *, idempotency_key: str | None = None) -> Hold:
        """Gives the hold's units back at once; a released or expired hold comes back as it is."""
        path = f"/v1/holds/{_seg(hold_id)}/release"
        return await self._call("POST", path, Hold, idempotency_key=idempotency_key)

    # -- reads -----------------------------------------------------------------------------

    async def stock(self, sku: str, channels: Iterable[str] | None = None) -> StockLevel:
        """One SKU by location, with its ATS on the given channels (default: all)."""
        params = {"channel": list(channels)} if channels is not None else None
        return await self._call("GET", f"/v1/stock/{_seg(sku)}", StockLevel, params=params)

    async def ats(self, channel: str, skus: Iterable[str]) -> Ats:
        """Available-to-sell of many SKUs on one channel; unknown SKUs are left out."""
        path, params = f"/v1/channels/{_seg(channel)}/ats", {"sku": list(skus)}
        return await self._call("GET", path, Ats, params=params)

    async def catalog(self) -> Catalog:
        return await self._call("GET", "/v1/catalog", Catalog)

    async def moves(
        self,
        *,
        sku: str | None = None,
        location: str | None = None,
        kind: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> MovePage:
        """One page of committed moves, oldest first; pass the page's `next` as `after`."""
        params = _given(sku=sku, location=location, kind=kind, after=after, limit=limit)
        return await self._call("GET", "/v1/moves", MovePage, params=params)

    async def iter_moves(
        self, *, sku: str | None = None, location: str | None = None, kind: str | None = None
    ) -> AsyncIterator[MoveRow]:
        """Every committed move that matches, oldest first, fetched page by page."""
        after: str | None = None
        while True:
            page = await self.moves(sku=sku, location=location, kind=kind, after=after, limit=500)
            for move in page.moves:
                yield move
            if page.next is None:
                return
            after = page.next

    # -- catalog ---------------------------------------------------------------------------

    async def define_location(self, location: str) -> Catalog:
        return await self._call("PUT", f"/v1/locations/{_seg(location)}", Catalog)

    async def define_channel(
        self, channel: str, locations: Iterable[str], policy: Policy | None = None
    ) -> Catalog:
        """Adds or replaces a channel: its locations in priority order, its default policy."""
        p = policy or Policy()
        body = {"locations": list(locations), "policy": {f: getattr(p, f) for f in _POLICY_IN}}
        return await self._call("PUT", f"/v1/channels/{_seg(channel)}", Catalog, body)

    async def define_sku(self, sku: str, *, buffer: int = 0) -> SkuSettings:
        """Adds a SKU, or sets its buffer: units never offered on any channel."""
        return await self._call("PUT", f"/v1/skus/{_seg(sku)}", SkuSettings, {"buffer": buffer})

    # -- moves: each returns the SKU's stock at the location it changed --------------------

    async def _move(self, verb: str, sku: str, body: dict[str, Any], more: Any) -> LocationStock:
        key, path = more.pop("idempotency_key", None), f"/v1/stock/{_seg(sku)}/{verb}"
        return await self._call("POST", path, LocationStock, body | more, idempotency_key=key)

    async def receive(
        self, sku: str, location: str, qty: int, **more: Unpack[MoveOptions]
    ) -> LocationStock:
        """Adds qty units to on_hand at the location."""
        return await self._move("receive", sku, {"location": location, "qty": qty}, more)

    async def adjust(
        self, sku: str, location: str, delta: int, reason: str, **more: Unpack[Options]
    ) -> LocationStock:
        """Changes on_hand by a signed delta, never below committed + held."""
        body = {"location": location, "delta": delta, "reason": reason}
        return await self._move("adjust", sku, body, more)

    async def count(
        self, sku: str, location: str, counted: int, **more: Unpack[MoveOptions]
    ) -> LocationStock:
        """Sets on_hand to the counted units, keeping live holds and committed units."""
        return await self._move("count", sku, {"location": location, "counted": counted}, more)

    async def ship(
        self, sku: str, location: str, qty: int, **more: Unpack[MoveOptions]
    ) -> LocationStock:
        """Ships committed units: on_hand and committed go down together."""
        return await self._move("ship", sku, {"location": location, "qty": qty}, more)

    async def cancel(
        self, sku: str, location: str, qty: int, **more: Unpack[MoveOptions]
    ) -> LocationStock:
        """Cancels committed units before shipment; they return to sale."""
        return await self._move("cancel", sku, {"location": location, "qty": qty}, more)

    async def return_units(
        self,
        sku: str,
        location: str,
        qty: int,
        *,
        damaged: bool = False,
        **more: Unpack[MoveOptions],
    ) -> LocationStock:
        """Takes back shipped units: restocked, or written off as damaged (with a reason)."""
        body = {"location": location, "qty": qty, "damaged": damaged}
        return await self._move("return", sku, body, more)

    async def transfer(
        self, sku: str, from_location: str, to_location: str, qty: int, **more: Unpack[MoveOptions]
    ) -> LocationStock:
        """Moves available units between locations; returns the destination's stock."""
        body = {"from_location": from_location, "to_location": to_location, "qty": qty}
        return await self._move("transfer", sku, body, more)


def _seg(value: str) -> str:
    """One path segment, escaped: names may hold '/', '+' and '#'."""
    return quote(value, safe="")


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
