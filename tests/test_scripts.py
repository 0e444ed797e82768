"""Script loading: EVALSHA, reloaded after the server forgets its scripts (NOSCRIPT)."""

from __future__ import annotations

from typing import Any

from helpers import setup_shop

from engine import Engine, HoldState
from engine.scripts import LUA_DIR, NAMES


async def test_every_script_file_is_registered_and_documented() -> None:
    on_disk = {p.stem for p in LUA_DIR.glob("*.lua")} - {"lib", "sale_lib"}
    assert on_disk == set(NAMES)
    for name in NAMES:
        header = (LUA_DIR / f"{name}.lua").read_text().splitlines()[:8]
        assert any("KEYS[" in line for line in header), f"{name}.lua header lacks KEYS"
        assert any("Returns" in line for line in header), f"{name}.lua header lacks Returns"


async def test_script_flush_is_survived_by_reloading(client: Any) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 3)
    await client.script_flush()
    hold = await engine.hold("web", {"A": 1}, ttl_ms=60_000)
    assert hold.state is HoldState.HELD
    await client.script_flush()
    await engine.receive("B", "wh1", 2)
    await client.script_flush()
    assert (await engine.hold("web", {"A": 1, "B": 1}, ttl_ms=60_000)).state is HoldState.HELD
    assert (await engine.stock("A")).ats["web"] == 1
