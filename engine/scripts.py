"""The Lua scripts, loaded once per client; the only module that knows where lua/ lives.

Each script is ``lua/lib.lua`` followed by ``lua/<name>.lua``, registered with
redis-py's ``register_script``, which calls EVALSHA and reloads on NOSCRIPT.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript

_HERE = Path(__file__).resolve().parent
# Installed wheels carry the scripts as engine/lua; a source checkout has them at the top.
LUA_DIR = _HERE / "lua" if (_HERE / "lua").is_dir() else _HERE.parent / "lua"

NAMES = (
    "hold",
    "extend",
    "release",
    "confirm",
    "receive",
    "adjust",
    "count",
    "ship",
    "cancel",
    "return_units",
    "transfer",
    "catalog",
    "sku",
    "stock",
    "ats",
    "sweep",
    "order",
    "sale_join",
    "sale_poll",
    "sale_use",
    "sale_mark",
    "inbox_accept",
)


@cache
def source(name: str) -> str:
    """The full text of one script: the shared prelude, then the script itself.

    The sale_* scripts (one flash sale's admission queue) have a prelude of their own;
    the inbox_* scripts (channel deliveries) need none.
    """
    script = (LUA_DIR / f"{name}.lua").read_text()
    if name.startswith("inbox_"):
        return script
    lib = (LUA_DIR / ("sale_lib.lua" if name.startswith("sale_") else "lib.lua")).read_text()
    return f"{lib}\n{script}"


class Scripts:
    """Every script, registered on one client (a Redis or a RedisCluster)."""

    def __init__(self, client: Any) -> None:
        self._by_name: dict[str, AsyncScript] = {
            name: client.register_script(source(name)) for name in NAMES
        }

    def __getitem__(self, name: str) -> AsyncScript:
        return self._by_name[name]

    async def load(self) -> None:
        """Loads every script now (redis-py would also load one on its first NOSCRIPT)."""
        for script in self._by_name.values():
            await script.registered_client.script_load(script.script)

    async def loaded(self) -> bool:
        """Whether the server holds every script (a restart or SCRIPT FLUSH empties it)."""
        client = next(iter(self._by_name.values())).registered_client
        found = await client.script_exists(*(s.sha for s in self._by_name.values()))
        return all(found.values()) if isinstance(found, dict) else all(found)
