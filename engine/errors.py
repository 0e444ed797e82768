"""Every error the engine raises on purpose, and the one place script codes become them.

Scripts never raise for business outcomes: they return an integer ``Code`` and
its details, and ``error_for`` turns that reply into an exception that carries
the data a caller needs. Redis failures surface as ``redis.RedisError``,
unwrapped.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Code(IntEnum):
    """Outcome codes returned by the Lua scripts (mirrored at the top of lua/lib.lua)."""

    OK = 0
    INSUFFICIENT_STOCK = 1
    UNKNOWN_SKU = 2
    UNKNOWN_CHANNEL = 3
    UNKNOWN_LOCATION = 4
    IDEMPOTENCY_CONFLICT = 5
    HOLD_NOT_FOUND = 6
    HOLD_NOT_ACTIVE = 7
    SHORTFALL = 8
    INSUFFICIENT_COMMITTED = 9
    COUNT_BELOW_RESERVED = 10
    MULTI_PART = 11
    LIMIT_EXCEEDED = 12
    UNKNOWN_SALE = 13
    SALE_ENDED = 14
    TICKET_NOT_FOUND = 15
    ADMISSION_INVALID = 16
    ADMISSION_USED = 17
    ADMISSION_EXPIRED = 18


class StockguardError(Exception):
    """Base class: the operation was refused and changed nothing."""


class ValidationError(StockguardError):
    """An argument is malformed: wrong type, out of range, or a bad identifier."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnknownSkuError(StockguardError):
    def __init__(self, sku: str) -> None:
        self.sku = sku
        super().__init__(f"unknown SKU {sku!r}")


class UnknownChannelError(StockguardError):
    def __init__(self, channel: str) -> None:
        self.channel = channel
        super().__init__(f"unknown channel {channel!r}")


class UnknownLocationError(StockguardError):
    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(f"unknown location {location!r}")


class InsufficientStockError(StockguardError):
    """Fewer units are available than requested; ``available`` is what there is now."""

    def __init__(self, sku: str, requested: int, available: int) -> None:
        self.sku, self.requested, self.available = sku, requested, available
        super().__init__(f"{sku}: requested {requested}, available {available}")


class InsufficientCommittedError(StockguardError):
    """Shipping or cancelling more units than are committed at the location."""

    def __init__(self, sku: str, location: str, requested: int, committed: int) -> None:
        self.sku, self.location = sku, location
        self.requested, self.committed = requested, committed
        super().__init__(f"{sku}@{location}: requested {requested}, committed {committed}")


class CountBelowReservedError(StockguardError):
    """A count below committed + held: release holds or cancel orders first."""

    def __init__(self, sku: str, location: str, counted: int, reserved: int) -> None:
        self.sku, self.location = sku, location
        self.counted, self.reserved = counted, reserved
        super().__init__(
            f"{sku}@{location}: counted {counted} is below committed + held {reserved}"
        )


class IdempotencyConflictError(StockguardError):
    """The operation id was used before with a different payload."""

    def __init__(self, op_id: str) -> None:
        self.op_id = op_id
        super().__init__(f"operation id {op_id!r} was already used with a different payload")


class HoldNotFoundError(StockguardError):
    def __init__(self, hold_id: str) -> None:
        self.hold_id = hold_id
        super().__init__(f"no hold {hold_id!r}")


class HoldNotActiveError(StockguardError):
    """The hold is already confirmed or released, so it cannot change that way."""

    def __init__(self, hold_id: str, state: str) -> None:
        self.hold_id, self.state = hold_id, state
        super().__init__(f"hold {hold_id!r} is {state}")


class ShortfallError(StockguardError):
    """An expired hold could not be confirmed or revived: refund the buyer.

    ``missing`` maps each short SKU to the units that could not be found.
    """

    def __init__(self, hold_id: str, missing: dict[str, int]) -> None:
        self.hold_id, self.missing = hold_id, missing
        short = ", ".join(f"{sku} short by {n}" for sku, n in missing.items())
        super().__init__(f"hold {hold_id!r} expired and stock no longer allows it: {short}")


class LimitExceededError(StockguardError):
    """A flash-sale hold would take a customer past the sale's per-customer limit."""

    def __init__(self, sku: str, requested: int, limit: int, used: int) -> None:
        self.sku, self.requested, self.limit, self.used = sku, requested, limit, used
        super().__init__(
            f"{sku}: the sale allows {limit} per customer; "
            f"{used} held or bought, {requested} more asked"
        )


class UnknownSaleError(StockguardError):
    def __init__(self, sale: str = "") -> None:
        self.sale = sale
        super().__init__(f"no sale {sale!r}")


class SaleEndedError(StockguardError):
    def __init__(self, sale: str, end_ms: int) -> None:
        self.sale, self.end_ms = sale, end_ms
        super().__init__(f"sale {sale!r} has ended")


class TicketNotFoundError(StockguardError):
    def __init__(self, ticket: str) -> None:
        self.ticket = ticket
        super().__init__(f"no ticket {ticket!r} for this customer in this sale")


class AdmissionRequiredError(StockguardError):
    """A hold of a SKU in a running flash sale needs an admission token from its queue."""

    def __init__(self, sale: str, sku: str) -> None:
        self.sale, self.sku = sale, sku
        super().__init__(
            f"{sku} is in flash sale {sale!r}: join its queue and hold with the admission token"
        )


class AdmissionInvalidError(StockguardError):
    """The admission token is forged, malformed, or for another sale or customer."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid admission token: {reason}")


class AdmissionUsedError(StockguardError):
    def __init__(self, ticket: str) -> None:
        self.ticket = ticket
        super().__init__("this admission token was already used for a hold")


class AdmissionExpiredError(StockguardError):
    def __init__(self, ticket: str) -> None:
        self.ticket = ticket
        super().__init__("this admission token has expired: join the queue again")


class KeyspaceLayoutError(StockguardError):
    """The server holds a keyspace laid out for another partition count: its SKUs would be
    looked up in the wrong partitions, so nothing connects to it."""

    def __init__(self, found: str, expected: int) -> None:
        self.found, self.expected = found, expected
        super().__init__(
            f"this server holds a stockguard keyspace laid out in {found} partitions; this "
            f"version uses {expected}. The ledger holds every move: flush the database (for "
            "the embedded server, remove <data dir>/valkey) and run `stockguard rebuild`"
        )


def _shortfall(hold_id: Any, *pairs: Any) -> ShortfallError:
    missing = {str(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    return ShortfallError(str(hold_id), missing)


_ERRORS: dict[int, Any] = {
    Code.INSUFFICIENT_STOCK: lambda sku, req, avail: InsufficientStockError(
        sku, int(req), int(avail)
    ),
    Code.UNKNOWN_SKU: UnknownSkuError,
    Code.UNKNOWN_CHANNEL: UnknownChannelError,
    Code.UNKNOWN_LOCATION: UnknownLocationError,
    Code.IDEMPOTENCY_CONFLICT: lambda op_id="": IdempotencyConflictError(op_id),
    Code.HOLD_NOT_FOUND: HoldNotFoundError,
    Code.HOLD_NOT_ACTIVE: HoldNotActiveError,
    Code.SHORTFALL: _shortfall,
    Code.INSUFFICIENT_COMMITTED: lambda sku, loc, req, com: InsufficientCommittedError(
        sku, loc, int(req), int(com)
    ),
    Code.LIMIT_EXCEEDED: lambda sku, req, limit, used: LimitExceededError(
        sku, int(req), int(limit), int(used)
    ),
    Code.UNKNOWN_SALE: UnknownSaleError,
    Code.SALE_ENDED: lambda sale, end_ms: SaleEndedError(sale, int(end_ms)),
    Code.TICKET_NOT_FOUND: TicketNotFoundError,
    Code.ADMISSION_INVALID: lambda ticket: AdmissionInvalidError("no such admission"),
    Code.ADMISSION_USED: AdmissionUsedError,
    Code.ADMISSION_EXPIRED: AdmissionExpiredError,
    Code.COUNT_BELOW_RESERVED: lambda sku, loc, counted, res: CountBelowReservedError(
        sku, loc, int(counted), int(res)
    ),
}


def error_for(reply: list[Any], op_id: str = "") -> StockguardError:
    """Turn a script's non-OK reply ``[code, details...]`` into its exception."""
    code, *details = reply
    if code == Code.IDEMPOTENCY_CONFLICT and not details:
        details = [op_id]
    return _ERRORS[code](*details)  # type: ignore[no-any-return]
