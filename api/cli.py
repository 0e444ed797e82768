"""The API's commands of `stockguard`: serve, keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from engine.config import Settings
from engine.store import Store

from .auth import Role, create_key


def add_commands(commands: Any) -> None:
    from .serve import add_arguments

    serve = commands.add_parser(
        "serve",
        help="run everything: embedded Valkey, HTTP API, writer, sweeper",
        description="Run the HTTP API with its writer and sweeper. Every setting is a flag, "
        "an environment variable, or a key of the TOML file given by --config; flags win "
        "over the environment, which wins over the file.",
    )
    add_arguments(serve)
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", default="", help="who or what uses it (default: the role)")
    verbs.add_parser("list", help="list keys: id, name, role, created, revoked")
    revoke = verbs.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from .serve import main

        return main(args)
    return asyncio.run(_keys(args, settings))


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    store = Store.from_url(settings.ledger_url)
    await store.open()
    try:
        if args.verb == "create":
            role = Role(args.role)
            key, row = await create_key(store, args.name or role.value, role)
            print(key)
            print(f"key {row.id} ({row.role}) created; it is not shown again", file=sys.stderr)
            return 0
        if args.verb == "list":
            print(f"{'id':<10} {'role':<10} {'created (UTC)':<20} {'revoked (UTC)':<20} name")
            for row in await store.api_keys():
                created, revoked = _when(row.created_ms), _when(row.revoked_ms)
                print(f"{row.id:<10} {row.role:<10} {created:<20} {revoked:<20} {row.name}")
            return 0
        if await store.revoke_key(args.key_id, int(time.time() * 1000)):
            print(f"key {args.key_id} revoked; servers refuse it within seconds")
            return 0
        print(f"keys: no live key {args.key_id!r}", file=sys.stderr)
        return 1
    finally:
        await store.close()
