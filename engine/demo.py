"""`stockguard demo`: a short walk through holds, confirms, releases and expiry."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

from .config import Settings
from .connect import open_engine
from .engine import Engine
from .errors import InsufficientStockError
from .models import Policy, PolicyKind

SKUS = ("TSHIRT-RED-M", "MUG-LOGO")


async def _table(engine: Engine, title: str) -> None:
    print(f"\n{title}")
    print(
        f"  {'sku':<14}{'location':<10}{'on_hand':>8}{'committed':>10}{'held':>6}{'available':>10}"
    )
    for sku in SKUS:
        stock = await engine.stock(sku)
        for row in stock.locations:
            print(
                f"  {sku:<14}{row.location:<10}{row.on_hand:>8}{row.committed:>10}"
                f"{row.held:>6}{row.available:>10}"
            )
        ats = "  ".join(f"{channel}={n}" for channel, n in stock.ats.items())
        print(f"  {'':<14}ATS: {ats}")


async def demo(settings: Settings, *, keep: bool = False) -> None:
    """Prints each step. It runs on a scratch embedded valkey-server, so that it never
    changes the catalog or stock that `serve` uses, unless told to keep what it makes:
    then it defines its locations, channels and SKUs at REDIS_URL or in the data dir."""
    if keep or settings.redis_url is not None:
        where = settings.redis_url or f"embedded valkey-server in {settings.data_dir}/valkey"
        print(f"stockguard demo on {where}")
        await _walk(settings)
        return
    with tempfile.TemporaryDirectory(prefix="stockguard-demo-") as scratch:
        print("stockguard demo on a scratch embedded valkey-server (removed when it ends)")
        await _walk(replace(settings, data_dir=Path(scratch)))


async def _walk(settings: Settings) -> None:
    async with open_engine(settings) as engine:
        for location in ("warehouse", "store"):
            await engine.define_location(location)
        await engine.define_channel("web", ["warehouse", "store"])
        await engine.define_channel("amazon", ["warehouse"], Policy(PolicyKind.CAP, 5))
        await engine.define_channel("pos", ["store"])
        for sku in SKUS:
            await engine.define_sku(sku, buffer=1)
            # A first run receives the stock; a later run counts it back to the same levels.
            levels = {row.location: row.on_hand for row in (await engine.stock(sku)).locations}
            for location, qty in (("warehouse", 10), ("store", 3)):
                if levels.get(location, 0) == 0:
                    await engine.receive(sku, location, qty, reason="demo delivery")
                else:
                    await engine.count(sku, location, qty, reason="demo count")
        await _table(engine, "Stock received (buffer 1 per SKU; amazon capped at 5 units):")

        basket = await engine.hold(
            "web", {"TSHIRT-RED-M": 4, "MUG-LOGO": 2}, ttl_ms=60_000, customer="alice"
        )
        print(
            f"\nweb holds {basket.id}: "
            + ", ".join(f"{line.qty} x {line.sku} @ {line.location}" for line in basket.lines)
        )
        amazon = await engine.hold("amazon", {"TSHIRT-RED-M": 5}, ttl_ms=60_000)
        print(f"amazon holds {amazon.id}: 5 x TSHIRT-RED-M")
        try:
            await engine.hold("amazon", {"TSHIRT-RED-M": 1}, ttl_ms=60_000)
        except InsufficientStockError as error:
            print(f"amazon asks for 1 more: refused, {error}")
        await _table(engine, "After two holds:")

        await engine.confirm(basket.id, reference="order-1001")
        print(f"\nweb confirms {basket.id} as order-1001 (held -> committed)")
        await engine.release(amazon.id)
        print(f"amazon releases {amazon.id}")
        flash = await engine.hold("pos", {"MUG-LOGO": 2}, ttl_ms=300)
        print(f"pos holds {flash.id} for 300 ms and walks away")
        await asyncio.sleep(0.5)
        print(
            f"  ... expired by the server's clock; the sweeper settles it: "
            f"{await engine.sweep()} expired"
        )
        await _table(engine, "After confirm, release and expiry:")
        for line in basket.lines:
            await engine.ship(line.sku, line.location, line.qty, reference="order-1001")
        print("\nwarehouse ships order-1001 (on_hand and committed go down together)")
        await _table(engine, "Final stock:")
