"""The engine's public surface is small and deliberate."""

from __future__ import annotations

import engine


def test_engine_all_is_pinned() -> None:
    assert sorted(engine.__all__) == [
        "BufferOverride",
        "Engine",
        "Hold",
        "HoldLine",
        "HoldState",
        "Policy",
        "PolicyKind",
        "Settings",
        "StockLevel",
        "StockguardError",
        "connect",
        "open_engine",
    ]
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_every_engine_error_carries_its_data() -> None:
    from engine import errors

    refused = errors.InsufficientStockError("A", 5, 2)
    assert (refused.sku, refused.requested, refused.available) == ("A", 5, 2)
    assert isinstance(refused, engine.StockguardError)
    short = errors.error_for([errors.Code.SHORTFALL, "h1", "A", 2, "B", 1])
    assert isinstance(short, errors.ShortfallError)
    assert short.missing == {"A": 2, "B": 1}
    for code in errors.Code:
        if code not in (errors.Code.OK, errors.Code.MULTI_PART):
            assert code in errors._ERRORS, f"{code!r} has no exception"
