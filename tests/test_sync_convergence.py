"""Sync convergence (issue 6): 1,000 ATS changes a second across 100 SKUs reach all four
platform simulators; every one ends holding exactly the final ATS, with no more pushes
than changes; and with the documented rate limits on, no simulator ever answers a
request beyond its limit (a 429), and all still converge.

The load runs in a process of its own and the simulators in another, as in
`stockguard bench sync` (engine/channels/bench.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine
from engine.channels.bench import run


async def test_a_thousand_changes_a_second_converge_on_every_platform(
    client: Any, redis_url: str
) -> None:
    result = await run(Engine(client), url=redis_url, skus=100, rate=1000, seconds=2.0)
    assert len(result.changes) >= 1500  # the load kept up (nearly) 1,000/s
    assert result.final_ok, "a simulator does not hold the engine's final ATS"
    assert all(lag >= 0 for lag in result.all_lags()), "a change never reached a platform"
    for channel, pushes in result.pushes.items():
        assert 0 < pushes <= len(result.changes), f"{channel}: {pushes} pushes"
    assert result.ratio <= 1.0


@pytest.mark.slow
async def test_with_the_documented_limits_no_platform_sees_a_request_beyond_them(
    client: Any, redis_url: str
) -> None:
    result = await run(
        Engine(client), url=redis_url, skus=100, rate=1000, seconds=1.0, limits=True,
        settle_s=90.0,
    )  # fmt: skip
    assert result.final_ok, "a simulator does not hold the engine's final ATS"
    assert result.throttled == dict.fromkeys(result.throttled, 0)
    assert sum(result.pushes.values()) <= len(result.changes) * len(result.pushes)
