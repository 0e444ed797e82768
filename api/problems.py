"""Every error a caller can get, as application/problem+json, mapped in this one place.

Each problem has a stable `type` URI (its last segment is the name clients switch
on), a status, and the data a caller needs: the SKU, requested and available for
insufficient stock, for instance.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from engine import errors

from .schemas import Problem

TYPE_BASE = "https://stockguard.dev/problems/"
MEDIA_TYPE = "application/problem+json"
_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    """An HTTP-level refusal: bad JSON, a missing key, the wrong role, a replay clash."""

    def __init__(self, status: int, kind: str, detail: str, **data: Any) -> None:
        self.status, self.kind, self.detail, self.data = status, kind, detail, data
        super().__init__(detail)


# Engine error → (status, type, title). The instance's attributes fill the problem.
ENGINE_ERRORS: dict[type[errors.StockguardError], tuple[int, str, str]] = {
    errors.ValidationError: (422, "validation", "Invalid input"),
    errors.UnknownSkuError: (404, "unknown-sku", "Unknown SKU"),
    errors.UnknownChannelError: (404, "unknown-channel", "Unknown channel"),
    errors.UnknownLocationError: (404, "unknown-location", "Unknown location"),
    errors.InsufficientStockError: (409, "insufficient-stock", "Insufficient stock"),
    errors.InsufficientCommittedError: (409, "insufficient-committed", "Not enough committed"),
    errors.CountBelowReservedError: (409, "count-below-reserved", "Count below reserved"),
    errors.IdempotencyConflictError: (409, "idempotency-conflict", "Idempotency conflict"),
    errors.HoldNotFoundError: (404, "hold-not-found", "Hold not found"),
    errors.HoldNotActiveError: (409, "hold-not-active", "Hold not active"),
    errors.ShortfallError: (409, "shortfall", "Hold expired and stock is short: refund"),
    errors.LimitExceededError: (409, "limit-exceeded", "Past the sale's per-customer limit"),
    errors.UnknownSaleError: (404, "unknown-sale", "Unknown sale"),
    errors.SaleEndedError: (410, "sale-ended", "The sale has ended"),
    errors.TicketNotFoundError: (404, "ticket-not-found", "Ticket not found"),
    errors.AdmissionRequiredError: (403, "admission-required", "An admission token is needed"),
    errors.AdmissionInvalidError: (403, "admission-invalid", "Invalid admission token"),
    errors.AdmissionUsedError: (409, "admission-used", "Admission token already used"),
    errors.AdmissionExpiredError: (410, "admission-expired", "Admission token expired"),
}

# HTTP-level problems: type → title. Statuses come with each ApiError.
API_ERRORS: dict[str, str] = {
    "malformed-json": "Malformed request body",
    "validation": "Invalid input",
    "body-too-large": "Request body too large",
    "unauthorized": "Missing or unknown API key",
    "forbidden": "This key's role may not do that",
    "idempotency-conflict": "Idempotency conflict",
    "idempotency-in-progress": "A request with this Idempotency-Key is in progress",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "unsupported-media-type": "Unsupported media type",
    "unavailable": "A backing service is unreachable; retry with the same Idempotency-Key",
    "internal": "Internal server error",
}

_FIELDS = frozenset(f for f in Problem.__struct_fields__ if f not in {"type", "title", "status"})


def _attributes(error: Exception) -> dict[str, Any]:
    return {k: v for k, v in vars(error).items() if k in _FIELDS and k != "detail"}


def problem(
    request: Request | None,
    status: int,
    kind: str,
    title: str,
    detail: str,
    data: dict[str, Any],
) -> Response:
    body = Problem(
        type=TYPE_BASE + kind,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        request_id=request.scope.get("request_id") if request is not None else None,
        **data,
    )
    headers = {"Retry-After": "1"} if kind in ("idempotency-in-progress", "unavailable") else None
    return Response(_encode(body), status, headers=headers, media_type=MEDIA_TYPE)


def engine_error(request: Request, error: Exception) -> Response:
    status, kind, title = ENGINE_ERRORS[type(error)]  # type: ignore[index]
    return problem(request, status, kind, title, str(error), _attributes(error))


def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    title = API_ERRORS[error.kind]
    return problem(request, error.status, error.kind, title, error.detail, error.data)


def http_error(request: Request, error: Exception) -> Response:
    """Starlette's own 404 and 405, as problems."""
    status = getattr(error, "status_code", 500)
    kind = {404: "not-found", 405: "method-not-allowed"}.get(status, "internal")
    return problem(request, status, kind, API_ERRORS[kind], str(getattr(error, "detail", "")), {})


def unavailable(request: Request, error: Exception) -> Response:
    """Redis or the ledger database cannot be reached: retryable, never the caller's fault."""
    detail = f"{type(error).__name__}: {error}"
    return problem(request, 503, "unavailable", API_ERRORS["unavailable"], detail, {})


def internal(request: Request, error: Exception) -> Response:
    """A bug: logged with its traceback by the server; the caller sees only the request id.

    Starlette runs this handler outside every middleware, so it sets x-request-id itself.
    """
    detail = "an unexpected error; the server log has it under this request_id"
    response = problem(request, 500, "internal", API_ERRORS["internal"], detail, {})
    if request_id := request.scope.get("request_id"):
        response.headers["x-request-id"] = request_id
    return response


def render(request: Request, error: errors.StockguardError | ApiError) -> Response:
    """The one function that turns a refusal into its problem response."""
    if isinstance(error, ApiError):
        return api_error(request, error)
    return engine_error(request, error)


def kind_of(error: errors.StockguardError | ApiError) -> str:
    """The problem type's name, for metrics and logs."""
    return error.kind if isinstance(error, ApiError) else ENGINE_ERRORS[type(error)][1]


def handlers() -> dict[Any, Any]:
    """The app's exception_handlers map: every error becomes a problem here."""
    import redis.exceptions
    from starlette.exceptions import HTTPException

    mapped: dict[Any, Any] = {cls: engine_error for cls in ENGINE_ERRORS}
    mapped[ApiError] = api_error
    mapped[HTTPException] = http_error
    mapped[redis.exceptions.ConnectionError] = unavailable
    mapped[redis.exceptions.TimeoutError] = unavailable
    mapped[OSError] = unavailable
    mapped[Exception] = internal
    return mapped
