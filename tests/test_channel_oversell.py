"""The oversell rehearsal (loadtest/channel_oversell.py) in small: 40 units on the four
platform storefronts, over real HTTP on loopback, against the fixture's server.

Each buyer waits at least 250 ms between its orders in the fenced run: a storefront whose
next order comes before the last one was recorded can be pushed back up to a stale ATS
(pushes are absolute), which is a race of its own, not one channel eating another's fence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from loadtest.channel_oversell import PLATFORMS, Load, Result, run_scenario, scenarios

UNITS = 40


async def rehearse(client: Any, redis_url: str, tmp_path: Path, name: str, load: Load) -> Result:
    scenario = next(s for s in scenarios(UNITS) if s.name == name)
    ledger_url = f"sqlite:///{tmp_path}/ledger.db"
    return await run_scenario(Engine(client), redis_url, ledger_url, scenario, UNITS, load)


@pytest.mark.timeout(30)
async def test_fences_of_10_on_four_channels_selling_at_once_never_oversell(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    load = Load(buyers=1, pause_ms=(250.0, 400.0))
    result = await rehearse(client, redis_url, tmp_path, "fenced", load)
    assert result.problems == []
    assert (result.oversell_lines, result.oversold_units, result.unfilled) == (0, 0, 0)
    assert result.sold == dict.fromkeys(PLATFORMS, UNITS // 4)
    assert result.committed == UNITS


@pytest.mark.timeout(30)
async def test_a_pool_sold_faster_than_the_sync_keeps_committed_within_on_hand(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    result = await rehearse(client, redis_url, tmp_path, "pool", Load(buyers=2, pause_ms=(0, 5)))
    assert result.problems == []  # settled; committed + held <= on_hand; nothing lost
    assert result.committed == UNITS  # every unit sold; oversells beyond it are unfilled
    assert result.units_sold == UNITS + result.unfilled
