"""`stockguard bench engine` in small: both paths place holds, each costed in CPU per hold."""

from __future__ import annotations

from engine import Engine, bench

SKUS = ["bench-a", "bench-b", "bench-c"]


async def test_each_path_places_holds_and_is_costed_on_both_sides(engine: Engine) -> None:
    await bench._stock(engine, SKUS)  # _setup would flush the tests' claim on the database
    paths = {"naive": bench._naive_hold, "engine": bench._engine_hold}
    rates = await bench._rates(engine, paths, SKUS, seconds=0.4, round_s=0.2)
    assert set(rates) == set(paths)
    for rate in rates.values():
        assert rate.holds_per_s > 0
        # A hold costs the server (every node of a cluster) and this process some CPU,
        # and far less than the 0.4 s the rounds took.
        assert 0 < rate.server_us < 100_000
        assert 0 < rate.client_us < 100_000
    levels = [await engine.stock(sku) for sku in SKUS]
    held = sum(location.held for level in levels for location in level.locations)
    assert held > 0  # the holds are real: their units are held
